"""The grid logger: jobs stream their output to it, their customers read it live.

`grid-logger serve` is the log service, `grid-logger write` the job-side writer. The writer's path
(`writer`, `proto`, `names`) needs only grpcio and protobuf, so compute nodes run it from the
daemon's install; the service needs the `logger` extra (cryptography) for its encrypted store.
"""
