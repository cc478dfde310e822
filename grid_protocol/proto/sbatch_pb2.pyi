# mypy: ignore-errors
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

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

class WantedSBatch(_message.Message):
    __slots__ = ("job_id", "batch_location_hash", "customer_address")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    BATCH_LOCATION_HASH_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    batch_location_hash: str
    customer_address: bytes
    def __init__(self, job_id: _Optional[str] = ..., batch_location_hash: _Optional[str] = ..., customer_address: _Optional[bytes] = ...) -> None: ...

class GetSBatchesRequest(_message.Message):
    __slots__ = ("jobs", "signed_challenge", "challenge", "provider_address")
    JOBS_FIELD_NUMBER: _ClassVar[int]
    SIGNED_CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    CHALLENGE_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[WantedSBatch]
    signed_challenge: bytes
    challenge: bytes
    provider_address: bytes
    def __init__(self, jobs: _Optional[_Iterable[_Union[WantedSBatch, _Mapping]]] = ..., signed_challenge: _Optional[bytes] = ..., challenge: _Optional[bytes] = ..., provider_address: _Optional[bytes] = ...) -> None: ...

class SBatchAnswer(_message.Message):
    __slots__ = ("job_id", "sbatch", "code", "message")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SBATCH_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    sbatch: str
    code: int
    message: str
    def __init__(self, job_id: _Optional[str] = ..., sbatch: _Optional[str] = ..., code: _Optional[int] = ..., message: _Optional[str] = ...) -> None: ...

class GetSBatchesResponse(_message.Message):
    __slots__ = ("answers", "grid_logger_url")
    ANSWERS_FIELD_NUMBER: _ClassVar[int]
    GRID_LOGGER_URL_FIELD_NUMBER: _ClassVar[int]
    answers: _containers.RepeatedCompositeFieldContainer[SBatchAnswer]
    grid_logger_url: str
    def __init__(self, answers: _Optional[_Iterable[_Union[SBatchAnswer, _Mapping]]] = ..., grid_logger_url: _Optional[str] = ...) -> None: ...
