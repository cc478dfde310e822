"""Settings of the Slurm layer, job users, submissions and the script guard: clear refusals of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from supervisor.slurm import InvalidSubmission, JobSubmission, JobUserSettings, SlurmSettings
from supervisor.slurm.commands import guard_script, sbatch_argv
from supervisor.slurm.runner import LocalRunner

NAME = "0x" + "ab" * 32


def job(**changes: object) -> JobSubmission:
    values: dict[str, object] = {
        "name": NAME, "script": "#!/bin/bash\necho hi\n", "unix_user": "grid-svc", "workdir": "/tmp/w",
        "output_path": "/tmp/w/out", "time_limit_minutes": 5, "ntasks": 2, "cpus_per_task": 3,
        "mem_per_cpu_mb": 512, "gpus": 1,
    }  # fmt: skip
    values.update(changes)
    return JobSubmission(**values)  # type: ignore[arg-type]


def test_guard_puts_true_right_after_the_shebang() -> None:
    script = "#!/bin/bash\n#SBATCH --time=999\necho hi\n"
    assert guard_script(script) == "#!/bin/bash\ntrue\n#SBATCH --time=999\necho hi\n"
    assert guard_script("#!/usr/bin/env bash") == "#!/usr/bin/env bash\ntrue\n"
    for bad in ("echo no shebang\n", "#!/usr/bin/python3\nprint(1)\n", ""):
        with pytest.raises(InvalidSubmission, match="shell shebang"):
            guard_script(bad)


def test_sbatch_line_has_the_resources_last_so_they_win() -> None:
    argv = sbatch_argv(job(), "grid", ["--qos=high", "--account=grid"])
    assert argv == [
        "sbatch", "--parsable", "--qos=high", "--account=grid", f"--job-name={NAME}", "--partition=grid",
        "--ntasks=2", "--cpus-per-task=3", "--mem-per-cpu=512", "--gpus=1", "--time=5",
        "--chdir=/tmp/w", "--output=/tmp/w/out",
    ]  # fmt: skip
    assert not any(a.startswith("--gpus") for a in sbatch_argv(job(gpus=0), "grid"))


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "0xAB" + "ab" * 31}, "not a job id"),
        ({"name": "job-1"}, "not a job id"),
        ({"unix_user": "Root;rm"}, "not a valid UNIX user"),
        ({"ntasks": 0}, "ntasks must be an integer >= 1"),
        ({"gpus": -1}, "gpus must be an integer >= 0"),
        ({"time_limit_minutes": True}, "time_limit_minutes"),
        ({"workdir": "relative"}, "absolute path"),
        ({"output_path": "/tmp/a\nb"}, "absolute path"),
        ({"script": "  \n"}, "empty"),
    ],
)
def test_bad_submissions_are_refused_with_the_reason(changes: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidSubmission, match=message):
        job(**changes)


def test_job_users_from_service_account_or_wallet_template() -> None:
    address = "0x70997970C51812dc3A010C7d01b50e0d17dc79C8"
    assert JobUserSettings().user_for(address) == "grid-svc"
    per_wallet = JobUserSettings(mode="per_wallet")
    assert per_wallet.user_for(address) == "grid-70997970c518"
    assert JobUserSettings(mode="per_wallet", template="u{hex:.20}").user_for(address) == (
        "u70997970c51812dc3a01"
    )
    with pytest.raises(ValueError, match="not an address"):
        per_wallet.user_for("0x1234")


@pytest.mark.parametrize(
    ("template", "message"),
    [("grid-{wallet}", "unknown fields"), ("{address}", "not a valid UNIX user"), ("Grid-{hex:.8}", "valid")],
)
def test_bad_templates_are_refused(template: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        JobUserSettings(mode="per_wallet", template=template)


@pytest.mark.parametrize("extra", ["--time=5", "-t", "-n4", "--gpus=2", "--job-name=x", "--uid=0", "--chdir"])
def test_extra_sbatch_options_cannot_override_the_job_definition(extra: str) -> None:
    with pytest.raises(ValidationError, match="would override"):
        SlurmSettings(partition="grid", extra_sbatch_args=(extra,))


def test_settings_load_from_a_config_mapping() -> None:
    settings = SlurmSettings.model_validate(
        {
            "backend": "ssh",
            "partition": "grid",
            "extra_sbatch_args": ["--qos=high"],
            "ssh": {"host": "login", "known_hosts": "/k", "client_key": "/c", "admin_user": "grid-admin"},
            "users": {"mode": "per_wallet"},
        }
    )
    assert settings.ssh is not None and settings.ssh.known_hosts == Path("/k")
    with pytest.raises(ValidationError, match="needs an \\[ssh\\] section"):
        SlurmSettings(backend="ssh", partition="grid")
    with pytest.raises(ValidationError, match="extra"):
        SlurmSettings.model_validate({"partition": "grid", "surprise": 1})


def test_command_prefix_is_an_absolute_argument_list() -> None:
    prefix = ("/usr/sbin/chroot", "/var/lib/grid-cluster-trixie/root")
    assert SlurmSettings(partition="grid", command_prefix=prefix).command_prefix == prefix
    assert SlurmSettings(partition="grid").command_prefix == ()
    for bad, message in (
        (["chroot", "/srv/root"], "absolute path"),
        (["/usr/sbin/chroot", ""], "empty"),
        (["/usr/sbin/chroot", "/srv\nroot"], "line break"),
    ):
        with pytest.raises(ValidationError, match=message):
            SlurmSettings(partition="grid", command_prefix=tuple(bad))


async def test_the_local_runner_runs_every_command_through_the_prefix() -> None:
    runner = LocalRunner(command_prefix=["/usr/bin/env", "GRID_PREFIXED=yes"])
    result = await runner.run(["env"], timeout=10)
    assert "GRID_PREFIXED=yes" in result.stdout.splitlines()
