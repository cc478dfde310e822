"""The local grid: anvil, contracts, sbatch service, Slurm, a meta-scheduler and customer commands."""
