"""Client of the sbatch service: fetches a job's batch script over gRPC."""
