"""Records what a test cluster's Slurm really prints, into tests/slurm/data/<release>/, for the parser tests.

    .venv/bin/python -m tests.slurm.record_samples --release trixie

For every JSON layout the release can print (`squeue --json=<data parser>`), one capture holds a
completed job, a failed one (exit code 3), one killed by a signal, a cancelled one, a running one and a
held one; then `sinfo --json`, the accounting lines of those jobs, `squeue --json` with slurmctld stopped
(stopped for a few seconds with `scripts/cluster.sh stop-ctld`, and always started again), and the
messages of refused and failed submissions.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from datetime import datetime
from pathlib import Path

from supervisor.slurm.commands import SACCT_FIELDS, TIME_FORMAT_ENV, squeue_json_argv
from tests.fixtures.slurm import SlurmCluster, ensure_cluster_up

DATA = Path(__file__).parent / "data"
FOLDER = Path("/tmp/grid-slurm-samples")
SCRIPTS = {
    "completed": "echo done",
    "failed": "exit 3",
    "signalled": "kill -9 $$",
    "cancelled": "sleep 300",
    "running": "sleep 300",
    "held": "true",
}
WANTED_STATES = {
    "completed": "COMPLETED",
    "failed": "FAILED",
    "signalled": "FAILED",
    "cancelled": "CANCELLED",
    "running": "RUNNING",
    "held": "PENDING",
}


def run(
    cluster: SlurmCluster, argv: list[str], *, user: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [*cluster.command_prefix, *(["runuser", "-u", user, "--"] if user else []), *argv]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


def data_parsers(cluster: SlurmCluster) -> list[str]:
    """The JSON layouts the release can print: its data parser plugins ('' for 22.05's only one)."""
    plugins = sorted((cluster.root_dir / "usr/lib/x86_64-linux-gnu/slurm-wlm").glob("data_parser_v*.so"))
    return [plugin.stem.removeprefix("data_parser_").replace("_", ".") for plugin in plugins] or [""]


def submit(cluster: SlurmCluster, tag: str, kind: str) -> int:
    options = ["--hold"] if kind == "held" else []
    result = run(
        cluster,
        ["sbatch", "--parsable", f"--job-name=sample-{tag}-{kind}", f"--chdir={FOLDER}", "--output=/dev/null",
         "--mem-per-cpu=100", "--time=5", *options, f"--wrap={SCRIPTS[kind]}"],
        user=cluster.service_user,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"sbatch failed: {result.stderr}")
    return int(result.stdout.strip().split(";")[0])


def states(text: str) -> dict[int, str]:
    found = {}
    for job in json.loads(text)["jobs"]:
        state = job["job_state"]
        found[job["job_id"]] = state if isinstance(state, str) else ",".join(state)
    return found


def capture_squeue(cluster: SlurmCluster, version: str) -> tuple[str, list[int]]:
    """One `squeue --json` answer in which every kind of job shows in the state wanted."""
    tag = version or "default"
    ids = {kind: submit(cluster, tag, kind) for kind in SCRIPTS}
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if cancelled_running(cluster, ids["cancelled"]):
                run(cluster, ["scancel", str(ids["cancelled"])])
            answer = run(cluster, squeue_json_argv(version or None)).stdout
            seen = states(answer)
            if all(seen.get(ids[kind], "").split(",")[0] == state for kind, state in WANTED_STATES.items()):
                return answer, list(ids.values())
            time.sleep(0.2)
        raise RuntimeError(f"squeue --json {version}: the states were never all seen at once")
    finally:
        run(cluster, ["scancel", str(ids["running"]), str(ids["held"]), str(ids["cancelled"])])


def cancelled_running(cluster: SlurmCluster, job_id: int) -> bool:
    shown = run(cluster, ["squeue", "-h", "-j", str(job_id), "-o", "%T"]).stdout.strip()
    return shown == "RUNNING"


def record(cluster: SlurmCluster, *, outage: bool = True) -> Path:
    out = DATA / cluster.release
    out.mkdir(parents=True, exist_ok=True)
    FOLDER.mkdir(exist_ok=True)
    FOLDER.chmod(0o1777)
    all_ids: list[int] = []
    # Job ids repeat when a cluster's state is reset: only records from now on are these jobs.
    began = datetime.now().strftime("%Y-%m-%dT%H:%M:%S")
    for version in data_parsers(cluster):
        answer, ids = capture_squeue(cluster, version)
        all_ids += ids
        suffix = f"-{version}" if version else ""
        (out / f"squeue{suffix}.json").write_text(answer)
        option = f"--json={version}" if version else "--json"
        (out / f"sinfo{suffix}.json").write_text(run(cluster, ["sinfo", option]).stdout)
    ids_text = ",".join(map(str, all_ids))
    deadline = time.monotonic() + 120
    while True:
        lines = run(
            cluster,
            ["sacct", "--noheader", "--parsable2", "--allocations", "--allusers", f"--jobs={ids_text}", f"--starttime={began}",
             f"--format={','.join(SACCT_FIELDS)}"],
            env=TIME_FORMAT_ENV | {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"},
        ).stdout  # fmt: skip
        rows = [line.split("|") for line in lines.splitlines()]
        # 22.05's first record of a job may name it "allocation" (user root) until the job's own arrives.
        if len(rows) == len(all_ids) and all(
            row[1].startswith("sample-") and row[2] not in ("PENDING", "RUNNING") for row in rows
        ):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"accounting never had the {len(all_ids)} jobs ended:\n{lines}")
        time.sleep(1)
    (out / "sacct.txt").write_text(lines)
    messages: dict[str, str] = {}
    refusals = {
        "invalid_partition": ["--partition=nosuchpartition"],
        "too_many_cpus": [f"--cpus-per-task={cluster.cpus_per_node * 4}"],
        "too_much_memory": [f"--mem-per-cpu={cluster.memory_mb_per_node * 4}"],
        "too_many_gpus": [f"--gpus={cluster.gpus_per_node + 5}"],
        "invalid_account": ["--account=nosuchaccount"],
        "invalid_qos": ["--qos=nosuchqos"],
    }
    for label, options in refusals.items():
        refused = run(
            cluster,
            ["sbatch", "--parsable", f"--chdir={FOLDER}", "--output=/dev/null", "--time=1", *options, "--wrap=true"],
            user=cluster.service_user,
        )  # fmt: skip
        messages[f"sbatch_{label}"] = refused.stderr
        if refused.returncode == 0:
            run(cluster, ["scancel", refused.stdout.strip().split(";")[0]])
    if outage:
        record_outage(cluster, out, messages)
    messages["scontrol_ping"] = run(cluster, ["scontrol", "ping"]).stdout
    (out / "messages.json").write_text(json.dumps(messages, indent=1, sort_keys=True) + "\n")
    (out / "version.txt").write_text(cluster.slurm_version + "\n")
    return out


def record_outage(cluster: SlurmCluster, out: Path, messages: dict[str, str]) -> None:
    stopped = cluster.run_script("stop-ctld")
    if stopped.returncode != 0:
        raise RuntimeError(stopped.stderr)
    try:
        down = run(cluster, squeue_json_argv())
        (out / "squeue_controller_down.json").write_text(down.stdout)
        messages["squeue_json_controller_down_status"] = str(down.returncode)
        messages["squeue_json_controller_down"] = down.stderr
        messages["squeue_name_controller_down"] = run(cluster, ["squeue", "--noheader", "--name=x"]).stderr
        messages["sbatch_controller_down"] = run(
            cluster, ["sbatch", "--parsable", f"--chdir={FOLDER}", "--output=/dev/null", "--wrap=true"],
            user=cluster.service_user,
        ).stderr  # fmt: skip
        messages["scontrol_ping_controller_down"] = run(cluster, ["scontrol", "ping"]).stdout
    finally:
        started = cluster.run_script("start-ctld")
        if started.returncode != 0:
            raise RuntimeError(started.stderr)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--release", default="bookworm", choices=["bookworm", "trixie", "forky"])
    parser.add_argument(
        "--no-outage", action="store_true", help="do not stop slurmctld (a cluster others use right now)"
    )
    args = parser.parse_args()
    print(record(ensure_cluster_up(args.release), outage=not args.no_outage))


if __name__ == "__main__":
    main()
