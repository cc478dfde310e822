"""What the supervisor, the sbatch service, the log service and grid-dev all speak: the contracts' ABIs,
the job record and its statuses, pricing, the gRPC stubs, and how a JSON-RPC batch's answers are
matched to its calls. One copy, so the parties cannot drift.

Pure: no module here talks to a chain or a network (`abi` only reads the packaged artifacts).
"""
