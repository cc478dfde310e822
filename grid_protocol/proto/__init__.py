"""The grid's gRPC APIs and their generated modules, one copy for servers and clients alike:
the sbatch service's `sbatchapi.v1alpha1` (sbatch.proto) and the log service's DeepSquare
`logger.v1alpha1` (log.proto).

Regenerate after editing a .proto, from the repository root:

    .venv/bin/python -m grid_protocol.proto.generate
"""
