"""Who may read and write, and what each refusal says: the real service on a real chain."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from grid_logger import signing
from grid_logger.reader import read_request
from grid_protocol.proto import log_pb2, log_pb2_grpc
from tests.fixtures.contracts import CREDIT, Grid, anvil_account
from tests.grid_logger.helpers import (
    BIN,
    Job,
    LoggerProcess,
    claimed_job,
    collect,
    collect_until,
    running_writer,
    wait_for,
)


@pytest.fixture(scope="module")
def job(grid: Grid) -> Job:
    return claimed_job(grid)


@pytest.fixture
def api(logger: LoggerProcess) -> Iterator[log_pb2_grpc.LoggerAPIStub]:
    with grpc.insecure_channel(logger.target) as channel:
        yield log_pb2_grpc.LoggerAPIStub(channel)  # type: ignore[no-untyped-call]


def read_status(api: log_pb2_grpc.LoggerAPIStub, request: log_pb2.ReadRequest) -> tuple[grpc.StatusCode, str]:
    """The status a Read ends with, after the service has read its first answer (follow off)."""
    call = api.Read(request, metadata=(("grid-log-follow", "0"),), timeout=15)
    try:
        list(call)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def signed(job: Job, text: bytes, signer: str | bytes | None = None) -> bytes:
    return signing.sign(signer if signer is not None else job.customer.key, text)


def test_the_customer_reads_with_v_0_1_or_27_28_and_any_case(
    api: log_pb2_grpc.LoggerAPIStub, job: Job
) -> None:
    request = read_request(job.customer.address, job.name, job.sign)
    assert read_status(api, request)[0] == grpc.StatusCode.OK
    low_v = request.signed_hash[:64] + bytes([request.signed_hash[64] - 27])
    request.signed_hash = low_v
    assert read_status(api, request)[0] == grpc.StatusCode.OK
    lower = read_request(job.customer.address.lower(), job.name, job.sign)
    assert read_status(api, lower)[0] == grpc.StatusCode.OK
    nanoseconds = read_request(job.customer.address, job.name, job.sign, timestamp=time.time_ns())
    assert read_status(api, nanoseconds)[0] == grpc.StatusCode.OK


def test_another_address_is_refused_even_with_its_own_valid_signature(
    api: log_pb2_grpc.LoggerAPIStub, grid: Grid, job: Job
) -> None:
    intruder = grid.customers[3]
    request = read_request(intruder.address, job.name, lambda text: signing.sign(intruder.key, text))
    code, details = read_status(api, request)
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "another customer" in details


@pytest.mark.parametrize("kind", ["other key", "garbage", "short", "other text"])
def test_a_bad_signature_is_unauthenticated(api: log_pb2_grpc.LoggerAPIStub, job: Job, kind: str) -> None:
    stamp = int(time.time())
    text = signing.read_text(job.customer.address, job.name, stamp)
    signature = {
        "other key": signed(job, text, anvil_account(12).key),
        "garbage": bytes(range(65)),
        "short": signed(job, text)[:64],
        "other text": signed(job, signing.read_text(job.customer.address, job.name, stamp + 1)),
    }[kind]
    request = log_pb2.ReadRequest(
        address=job.customer.address, log_name=job.name, timestamp=stamp, signed_hash=signature
    )
    assert read_status(api, request)[0] == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize(("offset", "word"), [(-3600, "stale"), (3600, "future")])
def test_a_timestamp_outside_the_window_is_unauthenticated(
    api: log_pb2_grpc.LoggerAPIStub, job: Job, offset: int, word: str
) -> None:
    request = read_request(job.customer.address, job.name, job.sign, timestamp=int(time.time()) + offset)
    code, details = read_status(api, request)
    assert code == grpc.StatusCode.UNAUTHENTICATED
    assert word in details and "600 s" in details


def test_a_job_that_does_not_exist_is_not_found(api: log_pb2_grpc.LoggerAPIStub, job: Job) -> None:
    request = read_request(job.customer.address, "0x" + "ab" * 32, job.sign)
    code, details = read_status(api, request)
    assert code == grpc.StatusCode.NOT_FOUND
    assert "no job" in details


@pytest.mark.parametrize("name", ["../../etc/passwd", "0x" + "a" * 63, "0x" + "g" * 64, "", "job.log"])
def test_malformed_log_names_are_refused(api: log_pb2_grpc.LoggerAPIStub, job: Job, name: str) -> None:
    request = read_request(job.customer.address, name, job.sign)
    assert read_status(api, request)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_a_malformed_address_is_refused(api: log_pb2_grpc.LoggerAPIStub, job: Job) -> None:
    request = read_request("0x1234", job.name, job.sign)
    assert read_status(api, request)[0] == grpc.StatusCode.INVALID_ARGUMENT


def test_watch_list_checks_its_signature_and_timestamp(api: log_pb2_grpc.LoggerAPIStub, job: Job) -> None:
    stamp = int(time.time()) - 3600
    text = signing.watch_list_text(job.customer.address, stamp)
    stale = log_pb2.WatchListRequest(
        address=job.customer.address, timestamp=stamp, signed_hash=signed(job, text)
    )
    with pytest.raises(grpc.RpcError) as refused:
        next(api.WatchList(stale, timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    now = int(time.time())
    forged = log_pb2.WatchListRequest(
        address=job.customer.address,
        timestamp=now,
        signed_hash=signed(job, signing.watch_list_text(job.customer.address, now), anvil_account(12).key),
    )
    with pytest.raises(grpc.RpcError) as refused:
        next(api.WatchList(forged, timeout=10))
    assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


# ---------------------------------------------------------------------------------- writers


def write_status(
    api: log_pb2_grpc.LoggerAPIStub,
    token: str | None,
    log_name: str,
    user: str,
    data: bytes = b"line",
    extra: tuple[tuple[str, str], ...] = (),
) -> tuple[grpc.StatusCode, str]:
    metadata = ((("grid-log-token", token),) if token is not None else ()) + extra
    request = log_pb2.WriteRequest(log_name=log_name, user=user, data=data, timestamp=time.time_ns())
    try:
        api.Write(iter([request]), metadata=metadata, timeout=15)
    except grpc.RpcError as error:
        return error.code(), error.details()
    return grpc.StatusCode.OK, ""


def test_the_jobs_token_writes_its_log(api: log_pb2_grpc.LoggerAPIStub, job: Job) -> None:
    assert write_status(api, job.token(), job.name, job.customer.address.lower())[0] == grpc.StatusCode.OK


def test_writes_without_a_valid_token_are_refused(
    api: log_pb2_grpc.LoggerAPIStub, grid: Grid, job: Job
) -> None:
    user = job.customer.address.lower()
    other = claimed_job(grid, customer_index=1, provider_index=1)
    cases = {
        "no token": (None, job.name, user),
        "malformed": ("not-a-token", job.name, user),
        "another provider's key": (job.token(grid.providers[1]), job.name, user),
        "the customer's own key": (job.token(job.customer), job.name, user),
        "another job's token": (other.token(), job.name, user),
    }
    for case, (token, name, owner) in cases.items():
        code, _ = write_status(api, token, name, owner)
        assert code == grpc.StatusCode.UNAUTHENTICATED, case


def test_a_provider_token_for_another_customer_is_permission_denied(
    api: log_pb2_grpc.LoggerAPIStub, grid: Grid, job: Job
) -> None:
    stranger = grid.customers[4].address
    token = signing.mint_write_token(job.provider.key, grid.deployment.meta_scheduler, job.name, stranger)
    code, details = write_status(api, token, job.name, stranger.lower())
    assert code == grpc.StatusCode.PERMISSION_DENIED
    assert "not the customer" in details


def test_writer_names_and_lines_are_validated(api: log_pb2_grpc.LoggerAPIStub, job: Job) -> None:
    user = job.customer.address.lower()
    assert write_status(api, job.token(), "../" + job.name, user)[0] == grpc.StatusCode.INVALID_ARGUMENT
    assert write_status(api, job.token(), job.name, "root")[0] == grpc.StatusCode.INVALID_ARGUMENT
    too_long = b"x" * (64 * 1024 + 1)
    assert write_status(api, job.token(), job.name, user, too_long)[0] == grpc.StatusCode.INVALID_ARGUMENT
    bad_seq = (("grid-log-writer", "00" * 8), ("grid-log-seq", "5-2"))
    assert (
        write_status(api, job.token(), job.name, user, extra=bad_seq)[0] == grpc.StatusCode.INVALID_ARGUMENT
    )


def test_a_stream_cannot_switch_logs(api: log_pb2_grpc.LoggerAPIStub, grid: Grid, job: Job) -> None:
    user = job.customer.address.lower()
    requests = [
        log_pb2.WriteRequest(log_name=job.name, user=user, data=b"mine", timestamp=time.time_ns()),
        log_pb2.WriteRequest(log_name="0x" + "01" * 32, user=user, data=b"theirs", timestamp=time.time_ns()),
    ]
    with pytest.raises(grpc.RpcError) as refused:
        api.Write(iter(requests), metadata=(("grid-log-token", job.token()),), timeout=15)
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_the_writer_with_a_bad_token_never_blocks_the_job(
    grid: Grid, logger: LoggerProcess, tmp_path: Path
) -> None:
    job = claimed_job(grid)
    environment = job.writer_env(logger)
    environment["GRID_LOGGER_TOKEN"] = job.token(grid.providers[1])
    with running_writer(tmp_path, environment) as writer:
        fd = writer.open()
        payload = b"y" * 1023 + b"\n"
        started = time.monotonic()
        for _ in range(4096):  # 4 MiB: 64 times what a FIFO holds
            os.write(fd, payload)
        assert time.monotonic() - started < 20
        wait_for("the refusal", lambda: "refused" in writer.stderr(), 15)
        assert writer.stop() == 0
        os.close(fd)
    assert "UNAUTHENTICATED" in writer.stderr()
    assert await collect(logger, job, follow=False) == []


async def test_writes_after_the_grace_are_failed_precondition(grid: Grid, tmp_path: Path) -> None:
    job = claimed_job(grid)
    closed = LoggerProcess(
        tmp_path / "closed",
        grid.anvil.http_url,
        grid.deployment.meta_scheduler,
        extra_env={"GRID_LOGGER_WRITE_GRACE_SECONDS": "0"},
    ).start()
    try:
        with grpc.insecure_channel(closed.target) as channel:
            api = log_pb2_grpc.LoggerAPIStub(channel)  # type: ignore[no-untyped-call]
            user = job.customer.address.lower()
            assert write_status(api, job.token(), job.name, user, b"while it runs")[0] == grpc.StatusCode.OK
            job.finish()
            finished = time.monotonic()
            end = grid.job(job.job_id)["end"]
            # Past the job's end, and past the job cache's 0.2 s, which read the job while it ran.
            wait_for(
                "the server's clock past the job's end and its cached view",
                lambda: time.time() > end + 0.5 and time.monotonic() - finished > 0.5,
                10,
            )
            # The service's job cache (0.2 s here) last read the job before it ended: it reads it again.
            code, details = write_status(api, job.token(), job.name, user, b"after")
        assert code == grpc.StatusCode.FAILED_PRECONDITION, details
        assert [line.data for line in await collect_until(closed, job, 1)] == [b"while it runs"]
    finally:
        closed.stop()


def test_the_writer_refuses_to_start_without_its_settings(tmp_path: Path) -> None:
    import subprocess

    result = subprocess.run(
        [str(BIN / "grid-logger"), "write", "--pipe", str(tmp_path / "fifo")],
        env={"PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "GRID_LOGGER_URL is not set" in result.stderr


def test_a_token_is_checked_against_the_chain_again_when_the_job_was_read_before_its_claim(
    grid: Grid, tmp_path: Path
) -> None:
    """The customer's reader often comes first, while the job is still pending (no provider yet);
    the job runs within the service's job cache: its writer's token must still be taken."""
    service = LoggerProcess(
        tmp_path / "logger",
        grid.anvil.http_url,
        grid.deployment.meta_scheduler,
        extra_env={"GRID_LOGGER_JOB_CACHE_SECONDS": "60"},
    ).start()
    try:
        provider, customer = grid.providers[0], grid.customers[2]
        if not grid.provider_manager.functions.isValidForScheduling(provider.address).call():
            grid.register_provider(provider)
        job = Job(grid, grid.request_job(customer, 200 * CREDIT), customer, provider)
        with grpc.insecure_channel(service.target) as channel:
            api = log_pb2_grpc.LoggerAPIStub(channel)  # type: ignore[no-untyped-call]
            early = read_request(customer.address, job.name, job.sign)
            assert read_status(api, early)[0] == grpc.StatusCode.OK  # cached: pending, no provider
            grid.schedule(job.job_id, provider)
            grid.claim(provider)
            user = customer.address.lower()
            assert write_status(api, job.token(), job.name, user) == (grpc.StatusCode.OK, "")
            other = job.token(grid.providers[1])
            assert write_status(api, other, job.name, user)[0] == grpc.StatusCode.UNAUTHENTICATED
    finally:
        service.stop()
