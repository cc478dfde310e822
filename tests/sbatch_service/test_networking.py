"""Network namespaces of steps, run for real on the test Slurm cluster (as root, as the jobs here run).

slirp4netns, pasta, WireGuard (wg-quick, with wireguard-go where the kernel has no WireGuard module)
and util-linux's unshare are real. A small DNS server of this test answers on the host's own address,
so a step's `dns` is checked end to end. Only DeepSquare's bore client (`dpsproxy`) is a stand-in,
recording its arguments and the namespace it runs in.
"""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fixtures.slurm import SlurmCluster
from tests.sbatch_service.slurm_helpers import Finished, calls, render_for_slurm, run_on_slurm, standin_env

ANSWER = "203.0.113.7"
NAME = "grid-test.example"


def route() -> list[str]:
    return subprocess.run(
        ["ip", "route", "get", "1"], capture_output=True, text=True, check=True
    ).stdout.split()


def host_address() -> str:
    """The host's primary address, where a step behind slirp4netns reaches the host."""
    return route()[route().index("src") + 1]


def gateway_address() -> str:
    """The default gateway: pasta gives a namespace the host's own address and maps the gateway's
    address to the host's loopback, so that is where a step behind pasta reaches the host."""
    return route()[route().index("via") + 1]


def _answer(query: bytes) -> bytes:
    """A DNS answer: an A record for NAME, NXDOMAIN for anything else."""
    ident = query[:2]
    position, labels = 12, []
    while query[position]:
        length = query[position]
        labels.append(query[position + 1 : position + 1 + length].decode())
        position += 1 + length
    question = query[12 : position + 5]
    if ".".join(labels) == NAME and query[position + 1 : position + 3] == b"\x00\x01":
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(ANSWER)
        return ident + b"\x81\x80" + struct.pack(">HHHH", 1, 1, 0, 0) + question + record
    return ident + b"\x81\x83" + struct.pack(">HHHH", 1, 0, 0, 0) + question


@pytest.fixture(scope="module")
def dns_server() -> Iterator[str]:
    """A nameserver on the host's address and on its loopback (where pasta maps the gateway)."""
    servers = []
    for address in (host_address(), "127.0.0.1"):
        server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        server.bind((address, 53))
        server.settimeout(0.2)
        servers.append(server)
    stop = threading.Event()

    def serve(server: socket.socket) -> None:
        while not stop.is_set():
            try:
                query, client = server.recvfrom(512)
            except TimeoutError:
                continue
            server.sendto(_answer(query), client)

    threads = [threading.Thread(target=serve, args=(server,), daemon=True) for server in servers]
    for thread in threads:
        thread.start()
    try:
        yield host_address()
    finally:
        stop.set()
        for thread, server in zip(threads, servers, strict=True):
            thread.join(timeout=2)
            server.close()


def live(names: tuple[str, ...]) -> set[int]:
    """Processes of these programs still running (zombies, already ended, are not counted)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        name, state = stat[stat.index("(") + 1 : stat.rindex(")")], stat[stat.rindex(")") + 2]
        if name in names and state != "Z":
            found.add(int(entry.name))
    return found


HELPERS = ("slirp4netns", "pasta", "pasta.avx2", "wireguard-go")


def run(workflow: dict[str, Any], tmp_path: Path, env: dict[str, str] | None = None) -> Finished:
    before = live(HELPERS)
    job, script = render_for_slurm(workflow, tmp_path / "storage")
    finished = run_on_slurm(script, job, tmp_path / "job", env)
    assert live(HELPERS) <= before, "the network helpers of the job ended with it"
    return finished


def resources(tasks: int = 1) -> dict[str, int]:
    return {"tasks": tasks, "cpusPerTask": 1, "memPerCpu": 100, "gpus": 0}


def test_steps_in_their_own_namespaces_with_dns(
    slurm_cluster: SlurmCluster, dns_server: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    report = (
        f'readlink /proc/self/ns/net > "$OUT/$NAME.netns"; getent hosts {NAME} > "$OUT/$NAME.dns" || true'
    )
    workflow = {
        "resources": resources(),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "slirp",
                "run": {
                    "network": "slirp4netns",
                    "mapUid": 0,
                    "mapGid": 0,
                    "dns": [dns_server, "192.0.2.53"],
                    "env": [{"key": "NAME", "value": "slirp"}],
                    "command": report + '; cp /etc/resolv.conf "$OUT/slirp.resolv"; id -u > "$OUT/slirp.uid"',
                },
            },
            {
                "name": "pasta",
                "run": {
                    "network": "pasta",
                    "mapUid": 0,
                    "dns": [gateway_address()],
                    "workDir": "/pasta dir",
                    "env": [{"key": "NAME", "value": "pasta"}],
                    "command": report + '; pwd > "$OUT/pasta.pwd"',
                },
            },
            {
                "name": "host",
                "run": {
                    "network": "host",
                    "dns": ["192.0.2.99"],
                    "env": [{"key": "NAME", "value": "host"}],
                    "command": report + '; cp /etc/resolv.conf "$OUT/host.resolv"',
                },
            },
        ],
    }
    finished = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    own = os.readlink("/proc/self/ns/net")
    assert (out / "host.netns").read_text().strip() == own
    for name in ("slirp", "pasta"):
        assert (out / f"{name}.netns").read_text().strip() != own, f"{name} runs in its own namespace"
        assert (out / f"{name}.dns").read_text().split() == [ANSWER, NAME], f"{name} asks its own nameserver"
    assert (out / "slirp.resolv").read_text() == f"nameserver {dns_server}\nnameserver 192.0.2.53\n"
    assert (out / "slirp.uid").read_text() == "0\n"
    job_folder = tmp_path / "storage" / str(os.getuid()) / f"job-{finished.job_id}"
    assert (out / "pasta.pwd").read_text() == f"{job_folder / 'pasta dir'}\n", (
        "workDir applies inside the namespace, inside the job's folder"
    )
    assert (out / "host.resolv").read_text() == Path("/etc/resolv.conf").read_text(), "dns needs a namespace"


def test_two_steps_of_a_job_reach_each_other_over_a_virtual_network(
    slurm_cluster: SlurmCluster, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    peer = {"network": "slirp4netns", "mapUid": 0, "mapGid": 0}
    workflow = {
        "resources": resources(tasks=2),
        "env": [{"key": "OUT", "value": str(out)}],
        "virtualNetworks": [{"name": "backend", "gatewayAddress": "10.0.0.1/24"}],
        "steps": [
            {
                "name": "server",
                "launch": {
                    "handleName": "server",
                    "steps": [
                        {
                            "name": "listen",
                            "run": {
                                **peer,
                                "customNetworkInterfaces": [
                                    {"vnet": {"name": "backend", "address": "10.0.0.2/24"}}
                                ],
                                "command": 'timeout 60 nc -l -p 12345 > "$OUT/received"',
                            },
                        }
                    ],
                },
            },
            {
                "name": "client",
                "run": {
                    **peer,
                    "customNetworkInterfaces": [{"vnet": {"name": "backend", "address": "10.0.0.3/24"}}],
                    "command": "for i in $(seq 60); do"
                    ' echo "hello over the virtual network" | timeout 3 nc -N 10.0.0.2 12345 && exit 0;'
                    " sleep 0.5; done; exit 1",
                },
            },
            {"name": "wait", "dependsOn": ["server"], "run": {"command": "true"}},
        ],
    }
    finished = run(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert (out / "received").read_text() == "hello over the virtual network\n"


def test_wireguard_and_bore_interfaces(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    env, log = standin_env(tmp_path)
    key = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    peer_key = subprocess.run(["wg", "genkey"], capture_output=True, text=True, check=True).stdout.strip()
    peer = subprocess.run(
        ["wg", "pubkey"], input=peer_key, capture_output=True, text=True, check=True
    ).stdout.strip()
    workflow = {
        "resources": resources(),
        "env": [{"key": "OUT", "value": str(out)}],
        "steps": [
            {
                "name": "tunnels",
                "run": {
                    "network": "pasta",
                    "mapUid": 0,
                    "customNetworkInterfaces": [
                        {
                            "bore": {
                                "boreAddress": "bore.example.org:2200",
                                "targetPort": 8080,
                                "secret": "s3cr'et",
                            }
                        },
                        {
                            "wireguard": {
                                "address": ["10.9.0.2/24"],
                                "privateKey": f"'{key}'",
                                "peers": [
                                    {
                                        "publicKey": peer,
                                        "allowedIPs": ["10.9.0.0/24"],
                                        "endpoint": "127.0.0.1:51820",
                                        "persistentKeepalive": 25,
                                    }
                                ],
                            }
                        },
                    ],
                    "command": 'ip -brief addr show wg1 > "$OUT/address"; wg show wg1 peers > "$OUT/peers";'
                    ' wg show wg1 endpoints > "$OUT/endpoints"',
                },
            },
            {
                "name": "in enroot",
                "run": {
                    "network": "slirp4netns",
                    "mapUid": 0,
                    "container": {"image": "/images/tool.sqsh"},
                    "customNetworkInterfaces": [
                        {"bore": {"address": "bore.example.org", "port": 2201, "targetPort": 9000}}
                    ],
                    "command": "true",
                },
            },
        ],
    }
    (tmp_path / "storage").mkdir()
    finished = run(workflow, tmp_path, env)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert (out / "address").read_text().split()[2] == "10.9.0.2/24"
    assert (out / "peers").read_text().strip() == peer
    assert (out / "endpoints").read_text().split() == [peer, "127.0.0.1:51820"]
    own = os.readlink("/proc/self/ns/net")
    bores = calls(log, "dpsproxy")
    assert [b["argv"] for b in bores] == [
        ["--to.addr", "bore.example.org:2200", "--local.addr", "localhost:8080", "--secret", "s3cr'et", "-r"],
        ["--to.addr", "bore.example.org:2201", "--local.addr", "localhost:9000", "-r"],
    ]
    assert all(b["netns"] != own for b in bores), "bore runs in the step's namespace"
    (start,) = [c for c in calls(log, "enroot") if c["argv"][0] == "start"]
    assert start["netns"] != own and start["uid"] == 0, "enroot start runs in the namespace, as mapped root"
    assert key not in finished.output and "s3cr'et" not in finished.output
