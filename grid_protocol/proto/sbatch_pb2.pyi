# mypy: ignore-errors
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class ChallengeRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChallengeResponse(_message.Message):
    __slots__ = ("challenge",)
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    challenge: bytes
    def __init__(self, challenge: _Optional[bytes] = ...) -> None: ...

class GetSBatchRequest(_message.Message):
    __slots__ = ("batch_location_hash", "signed_challenge", "challenge", "provider_address", "customer_address", "job_id")
    BATCH_LOCATION_HASH_FIELD_NUMBER: _ClassVar[int]
    SIGNED_CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    batch_location_hash: str
    signed_challenge: bytes
    challenge: bytes
    provider_address: bytes
    customer_address: bytes
    job_id: str
    def __init__(self, batch_location_hash: _Optional[str] = ..., signed_challenge: _Optional[bytes] = ..., challenge: _Optional[bytes] = ..., provider_address: _Optional[bytes] = ..., customer_address: _Optional[bytes] = ..., job_id: _Optional[str] = ...) -> None: ...

class GetSBatchResponse(_message.Message):
    __slots__ = ("sbatch", "grid_logger_url")
    SBATCH_FIELD_NUMBER: _ClassVar[int]
    GRID_LOGGER_URL_FIELD_NUMBER: _ClassVar[int]
    sbatch: str
    grid_logger_url: str
    def __init__(self, sbatch: _Optional[str] = ..., grid_logger_url: _Optional[str] = ...) -> None: ...
