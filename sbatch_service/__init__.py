"""The sbatch service: validates customer workflows, renders them into batch scripts, stores them,
and serves each script over gRPC only to the provider that holds the job on chain."""
