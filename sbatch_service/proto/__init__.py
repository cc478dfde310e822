"""The gRPC API of the sbatch service (`sbatchapi.v1alpha1`): sbatch.proto and its generated modules.

Regenerate after editing sbatch.proto, from the repository root:

    .venv/bin/python -m sbatch_service.proto.generate
"""
