"""The customer commands against a real anvil with the deployed protocol and a real sbatch service."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from eth_account.signers.local import LocalAccount
from typer.testing import CliRunner

from grid_dev.chain import GridError
from grid_dev.cli import CUSTOMER_KEY_ENV, app
from grid_dev.customer import storage_type, store_workflow
from grid_dev.matching import encode_operator
from grid_protocol.jobs import JobStatus, StorageType
from sbatch_service.storage import ScriptStore, script_key
from tests.fixtures.contracts import CREDIT, WORKED_EXAMPLE_PRICES, Grid
from tests.fixtures.sbatch import SbatchProcess

HELLO = """\
resources: { tasks: 1, cpusPerTask: 1, memPerCpu: 1024, gpus: 0 }
steps:
  - name: hello-world
    run: { command: echo "hello world" }
"""
#: The worked example of PROTOCOL.md section 3: 10.56384 credits per minute on its prices.
WORKED = """\
resources: { tasks: 1, cpusPerTask: 2, memPerCpu: 1024, gpus: 1 }
steps:
  - name: work
    run: { command: sleep 1 }
"""


@pytest.fixture
def chain(clean_grid: Grid) -> Iterator[Grid]:
    yield clean_grid


@pytest.fixture
def workflows(tmp_path: Path) -> dict[str, Path]:
    files = {"hello": HELLO, "worked": WORKED, "bad": HELLO.replace("gpus: 0", "gpus: 0, colour: red")}
    paths = {}
    for name, text in files.items():
        paths[name] = tmp_path / f"{name}.yaml"
        paths[name].write_text(text)
    return paths


class Cli:
    """`grid-dev` run in-process against the module's grid, as one customer."""

    def __init__(self, chain: Grid, sbatch: SbatchProcess, customer: LocalAccount, deployment: Path) -> None:
        self.chain = chain
        self.sbatch = sbatch
        self.customer = customer
        self.deployment = deployment
        self.runner = CliRunner()

    def common(self) -> list[str]:
        return ["--rpc", self.chain.anvil.http_url, "--deployment", str(self.deployment)]

    def __call__(self, *args: str, key: str | None = None) -> tuple[int, str, str]:
        key = self.customer.key.hex() if key is None else key
        env = {CUSTOMER_KEY_ENV: key} if key else {CUSTOMER_KEY_ENV: ""}
        result = self.runner.invoke(app, [*args, *self.common()], env=env)
        return result.exit_code, result.stdout, result.stderr

    def submit(self, workflow: Path, credits: str, *extra: str) -> tuple[int, str, str]:
        return self(
            "submit", str(workflow), "--credits", credits, "--sbatch-url", self.sbatch.graphql_url, *extra
        )


@pytest.fixture
def cli(chain: Grid, sbatch_service: SbatchProcess, tmp_path: Path) -> Cli:
    deployment = tmp_path / "deployment.json"
    chain.deployment.write(deployment)
    return Cli(chain, sbatch_service, chain.customers[0], deployment)


def submitted_job_id(stdout: str) -> bytes:
    last = stdout.strip().splitlines()[-1]
    assert last.startswith("0x") and len(last) == 66, stdout
    return bytes.fromhex(last[2:])


def one_line_error(code: int, stderr: str) -> str:
    assert code == 1
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("error: ")
    return lines[0]


# -- submit ------------------------------------------------------------------------------------


def test_submit_stores_the_workflow_and_puts_its_key_on_chain(
    cli: Cli, chain: Grid, workflows: dict[str, Path]
) -> None:
    before = chain.balance(cli.customer)
    code, out, err = cli.submit(workflows["hello"], "150.5")
    assert code == 0, err
    job_id = submitted_job_id(out)

    job = chain.job(job_id)
    assert job["status"] == JobStatus.PENDING
    assert job["customerAddr"] == cli.customer.address
    assert job["maxCost"] == 150 * CREDIT + CREDIT // 2
    gpus, mem_per_cpu, cpus_per_task, ntasks, key, storage, uses, affinity = job["definition"]
    assert (gpus, mem_per_cpu, cpus_per_task, ntasks) == (0, 1024, 1, 1)
    assert storage == StorageType.NONE  # the workflow has no output, as DeepSquare's SDK marks it
    assert (uses, affinity) == ([], [])
    assert f"batch script key {key}" in out
    assert job["jobName"].rstrip(b"\0") == b"hello"
    assert chain.balance(cli.customer) == before - job["maxCost"]

    store = ScriptStore(cli.sbatch.database)
    try:
        script = store.get(key)
    finally:
        store.close()
    assert script is not None and script_key(script) == key
    assert "hello world" in script


@pytest.mark.parametrize(
    ("document", "expected"),
    [
        ({"resources": {}, "steps": []}, StorageType.NONE),
        ({"output": None}, StorageType.NONE),
        ({"output": {}}, StorageType.NONE),
        ({"output": {"s3": {"bucketUrl": "s3://b"}}}, StorageType.S3),
        ({"output": {"s3": {}, "http": {"url": "https://transfer.deepsquare.run/"}}}, StorageType.S3),
        ({"output": {"http": {"url": "https://transfer.deepsquare.run/"}}}, StorageType.TRANSFER),
        ({"output": {"http": {"url": "https://transfer.deepsquare.run"}}}, StorageType.HTTP),
        ({"output": {"http": {"url": "https://upload.example.org/"}}}, StorageType.HTTP),
        ("not a mapping", StorageType.NONE),
    ],
)
def test_storage_type_follows_the_output_as_the_sdk_sets_it(document: object, expected: StorageType) -> None:
    assert storage_type(document) == expected


def test_submit_puts_uses_and_affinity_on_chain(cli: Cli, chain: Grid, workflows: dict[str, Path]) -> None:
    code, out, err = cli.submit(
        workflows["worked"],
        "100",
        "--uses",
        "os=linux",
        "--uses",
        "arch=x86_64",
        "--affinity",
        "gpu-gen>=3",
        "--affinity",
        "region!=us",
        "--name",
        "training",
        "--delegate-spending",
    )
    assert code == 0, err
    job = chain.job(submitted_job_id(out))
    gpus, mem_per_cpu, cpus_per_task, ntasks, _key, _storage, uses, affinity = job["definition"]
    assert (gpus, mem_per_cpu, cpus_per_task, ntasks) == (1, 1024, 2, 1)
    assert uses == [("os", "linux"), ("arch", "x86_64")]
    assert affinity == [(("gpu-gen", "3"), encode_operator(">=")), (("region", "us"), encode_operator("!="))]
    assert job["jobName"].rstrip(b"\0") == b"training"
    assert job["delegateSpendingAuthority"] is True


def test_a_key_file_works_and_must_be_private(
    cli: Cli, chain: Grid, workflows: dict[str, Path], tmp_path: Path
) -> None:
    key_file = tmp_path / "customer.key"
    key_file.write_text(cli.customer.key.hex() + "\n")
    key_file.chmod(0o644)
    code, _, err = cli.submit(workflows["hello"], "100", "--key-file", str(key_file))
    assert "chmod 600" in one_line_error(code, err)
    key_file.chmod(0o600)
    code, out, err = cli.submit(workflows["hello"], "100", "--key-file", str(key_file))
    assert code == 0, err
    assert chain.job(submitted_job_id(out))["customerAddr"] == cli.customer.address


def test_submit_refuses_bad_input_with_one_line(
    cli: Cli, chain: Grid, workflows: dict[str, Path], tmp_path: Path
) -> None:
    poor: LocalAccount = chain.providers[2]  # holds no credits
    cases: list[tuple[tuple[str, ...], str | None, str]] = [
        ((str(workflows["bad"]), "--credits", "100"), None, "is invalid: resources.colour"),
        ((str(tmp_path / "missing.yaml"), "--credits", "100"), None, "missing.yaml does not exist"),
        ((str(workflows["hello"]), "--credits", "lots"), None, "'lots' is not a number of credits"),
        (
            (str(workflows["hello"]), "--credits", "50"),
            None,
            "insufficient credits: 50 locked, the grid's minimum is 100",
        ),
        (
            (str(workflows["hello"]), "--credits", "100"),
            poor.key.hex(),
            f"insufficient credits: {poor.address} holds 0",
        ),
        (
            (str(workflows["hello"]), "--credits", "100"),
            "",
            "no customer key: pass --key-file or set GRID_CUSTOMER_KEY",
        ),
        (
            (str(workflows["hello"]), "--credits", "100"),
            "0x1234",
            "GRID_CUSTOMER_KEY does not hold a valid private key",
        ),
        (
            (str(workflows["hello"]), "--credits", "100", "--affinity", "gpu~3"),
            None,
            "--affinity 'gpu~3': expected KEY OP VALUE",
        ),
        (
            (str(workflows["hello"]), "--credits", "100", "--uses", "novalue"),
            None,
            "--uses 'novalue': expected KEY=VALUE",
        ),
    ]
    for args, key, message in cases:
        code, _, err = cli("submit", *args, "--sbatch-url", cli.sbatch.graphql_url, key=key)
        assert message in one_line_error(code, err), (args, err)
    assert chain.jobs.functions.getByCustomer(cli.customer.address).call() == []


def test_submit_names_an_unreachable_sbatch_service_and_rpc(cli: Cli, workflows: dict[str, Path]) -> None:
    code, _, err = cli(
        "submit", str(workflows["hello"]), "--credits", "100", "--sbatch-url", "http://127.0.0.1:9"
    )
    assert "no sbatch service answers at http://127.0.0.1:9/graphql" in one_line_error(code, err)
    result = cli.runner.invoke(
        app,
        [
            "submit",
            str(workflows["hello"]),
            "--credits",
            "100",
            "--rpc",
            "http://127.0.0.1:9",
            "--meta-scheduler",
            cli.chain.deployment.meta_scheduler,
        ],
        env={CUSTOMER_KEY_ENV: cli.customer.key.hex()},
    )
    assert "no JSON-RPC endpoint answers at http://127.0.0.1:9" in one_line_error(
        result.exit_code, result.stderr
    )


def test_a_revert_is_reported_as_the_decoded_custom_error(
    cli: Cli, chain: Grid, workflows: dict[str, Path]
) -> None:
    chain.send(chain.admin, chain.scheduler.functions.setEnableRequestNewJob(False))
    code, _, err = cli.submit(workflows["hello"], "100")
    assert one_line_error(code, err) == "error: requesting the job would revert: NewJobRequestDisabled()"


# -- watch -------------------------------------------------------------------------------------


def test_watch_follows_a_job_to_settlement(cli: Cli, chain: Grid, workflows: dict[str, Path]) -> None:
    provider = chain.providers[0]
    chain.register_provider(provider, WORKED_EXAMPLE_PRICES)
    code, out, err = cli.submit(workflows["worked"], "200")
    assert code == 0, err
    job_id = submitted_job_id(out)
    watcher = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "grid-dev"),
            "watch",
            "0x" + job_id.hex(),
            "--poll",
            "0.2",
            *cli.common(),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != CUSTOMER_KEY_ENV},
    )
    try:
        chain.schedule(job_id, provider)
        chain.claim(provider)
        chain.send(
            provider, chain.scheduler.functions.providerSetJobStatus(job_id, JobStatus.RUNNING, 0, "", 0)
        )
        chain.advance_time(10 * 60)
        chain.send(
            provider, chain.scheduler.functions.providerSetJobStatus(job_id, JobStatus.FINISHED, 10, "", 0)
        )
        out, err = watcher.communicate(timeout=60)
    finally:
        if watcher.poll() is None:
            watcher.kill()
    assert watcher.returncode == 0, err
    lines = out.strip().splitlines()
    assert [line.split("  ")[-1] for line in lines[:-1]] == [
        "PENDING -> META_SCHEDULED",
        "META_SCHEDULED -> SCHEDULED",
        "SCHEDULED -> RUNNING",
        "RUNNING -> FINISHED",
    ]
    assert lines[-1] == (
        "job ended FINISHED: final cost 105.6384 credits, refunded 94.3616 of 200 locked; exit code 0"
    )


def test_watch_of_an_unknown_job_says_so(cli: Cli) -> None:
    code, _, err = cli("watch", "12345")
    assert one_line_error(code, err) == f"error: no job 0x{12345:064x} on this deployment"
    code, _, err = cli("watch", "0xabc")
    assert "'0xabc' is not a job id" in one_line_error(code, err)


# -- cancel and top-up -------------------------------------------------------------------------


def test_cancel_refunds_a_pending_job(cli: Cli, chain: Grid, workflows: dict[str, Path]) -> None:
    before = chain.balance(cli.customer)
    code, out, err = cli.submit(workflows["hello"], "120")
    assert code == 0, err
    job_id = submitted_job_id(out)
    assert chain.balance(cli.customer) == before - 120 * CREDIT

    code, out, err = cli("cancel", "0x" + job_id.hex())
    assert code == 0, err
    assert out.strip() == f"job 0x{job_id.hex()} CANCELLED; 120 credits refunded"
    assert chain.balance(cli.customer) == before
    assert chain.job(job_id)["status"] == JobStatus.CANCELLED

    code, _, err = cli("cancel", "0x" + job_id.hex())
    assert one_line_error(code, err) == f"error: job 0x{job_id.hex()} is already CANCELLED: nothing to cancel"
    code, _, err = cli("watch", "0x" + job_id.hex())
    assert code == 0, err


def test_cancel_refuses_another_customers_job(cli: Cli, chain: Grid, workflows: dict[str, Path]) -> None:
    code, out, err = cli.submit(workflows["hello"], "100")
    job_id = submitted_job_id(out)
    other = chain.customers[1]
    code, _, err = cli("cancel", "0x" + job_id.hex(), key=other.key.hex())
    assert one_line_error(code, err) == (
        f"error: job 0x{job_id.hex()} belongs to {cli.customer.address}, not to {other.address}"
    )


def test_cancel_of_a_running_job_asks_its_provider(cli: Cli, chain: Grid, workflows: dict[str, Path]) -> None:
    provider = chain.providers[0]
    chain.register_provider(provider, WORKED_EXAMPLE_PRICES)
    _, out, _ = cli.submit(workflows["worked"], "200")
    job_id = submitted_job_id(out)
    chain.schedule(job_id, provider)
    chain.claim(provider)
    chain.send(provider, chain.scheduler.functions.providerSetJobStatus(job_id, JobStatus.RUNNING, 0, "", 0))
    code, out, err = cli("cancel", str(int.from_bytes(job_id, "big")))
    assert code == 0, err
    assert "is RUNNING: cancellation requested" in out
    assert chain.queues.functions.hasCancellingJob(provider.address).call()


def test_topup_raises_max_cost(cli: Cli, chain: Grid, workflows: dict[str, Path]) -> None:
    provider = chain.providers[0]
    chain.register_provider(provider, WORKED_EXAMPLE_PRICES)
    _, out, _ = cli.submit(workflows["worked"], "200")
    job_id = submitted_job_id(out)

    code, _, err = cli("topup", "0x" + job_id.hex(), "--credits", "50")
    assert one_line_error(code, err) == (
        f"error: job 0x{job_id.hex()} is PENDING: only a SCHEDULED or RUNNING job can be topped up"
    )
    chain.schedule(job_id, provider)
    chain.claim(provider)
    before = chain.balance(cli.customer)
    code, out, err = cli("topup", "0x" + job_id.hex(), "--credits", "50")
    assert code == 0, err
    assert out.strip() == f"job 0x{job_id.hex()} topped up by 50: 250 credits locked in all"
    job = chain.job(job_id)
    assert (job["maxCost"], job["pendingTopUp"]) == (250 * CREDIT, 50 * CREDIT)
    assert chain.balance(cli.customer) == before - 50 * CREDIT
    assert chain.queues.functions.hasTopUpJob(provider.address).call()

    code, _, err = cli("topup", "0x" + job_id.hex(), "--credits", "2000000")
    assert "insufficient credits" in one_line_error(code, err)


def test_the_deployment_can_be_named_by_its_meta_scheduler_alone(
    cli: Cli, chain: Grid, workflows: dict[str, Path]
) -> None:
    result = cli.runner.invoke(
        app,
        [
            "submit",
            str(workflows["hello"]),
            "--credits",
            "100",
            "--sbatch-url",
            cli.sbatch.graphql_url.removesuffix("/graphql"),
            "--rpc",
            chain.anvil.http_url,
            "--meta-scheduler",
            chain.deployment.meta_scheduler,
        ],
        env={CUSTOMER_KEY_ENV: cli.customer.key.hex()},
    )
    assert result.exit_code == 0, result.stderr
    assert chain.job(submitted_job_id(result.stdout))["status"] == JobStatus.PENDING
    result = cli.runner.invoke(
        app, ["watch", "1", "--rpc", chain.anvil.http_url, "--meta-scheduler", "0x1234"]
    )
    assert "--meta-scheduler '0x1234' is not an address" in one_line_error(result.exit_code, result.stderr)


def test_no_deployment_named_is_an_error(cli: Cli) -> None:
    result = cli.runner.invoke(app, ["cancel", "1"], env={CUSTOMER_KEY_ENV: cli.customer.key.hex()})
    assert "--deployment deployment.json or --meta-scheduler ADDRESS" in one_line_error(
        result.exit_code, result.stderr
    )


def test_a_refusal_of_the_sbatch_service_names_the_field(sbatch_service: SbatchProcess) -> None:
    workflow = {"resources": {"tasks": 0, "cpusPerTask": 1, "memPerCpu": 1}, "steps": []}
    with pytest.raises(
        GridError, match=r"^the sbatch service refused the workflow: .*\(field resources\.tasks\)$"
    ):
        store_workflow(sbatch_service.graphql_url, workflow)
    with pytest.raises(GridError, match="is not an http"):
        store_workflow("ftp://example", workflow)
