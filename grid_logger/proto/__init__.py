"""The grid logger's gRPC API (`logger.v1alpha1`): log.proto and its generated modules.

Regenerate after editing log.proto, from the repository root:

    .venv/bin/python -m grid_logger.proto.generate
"""
