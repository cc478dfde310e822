"""Provider-side daemon of the grid: follows the MetaScheduler contract and runs jobs on Slurm."""
