"""What a login node gets from a non-editable install of the built wheel, with the daemon's dependencies
alone (no extra): the contracts' ABIs and the protocol's errors inside the package, a doctor that
passes against the real stack, no GraphQL/HTTP server stack nor Solidity compiler, and clear
messages from the commands that need an extra. Also: the lock file covers what pyproject declares.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from grid_contracts.artifacts import CONTRACT_NAMES
from grid_protocol.abi import ABI_DIR
from supervisor.launchers import EXTRA_MODULES
from tests.fixtures.supervisor import ProviderStack

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "requirements" / "supervisor.lock"
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PIP_QUIET = ["--quiet", "--disable-pip-version-check"]


def pinned(requirement: str) -> tuple[str, str]:
    name, version = requirement.split("==")
    return re.sub(r"[-_.]+", "-", name).lower(), version


def lock_pins() -> dict[str, str]:
    pins = {}
    for line in LOCK.read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, version = pinned(line.split()[0])
            pins[name] = version
    return pins


def test_the_repository_abi_folder_is_the_packaged_one() -> None:
    """One source of truth: `abi/` is a link to the package folder that the readers use."""
    assert (REPO / "abi").is_symlink()
    assert (REPO / "abi").resolve() == ABI_DIR.resolve()
    assert ABI_DIR.resolve().parent == (REPO / "grid_contracts").resolve()
    assert sorted(p.stem for p in ABI_DIR.glob("*.json")) == sorted(CONTRACT_NAMES)


def test_the_lock_pins_the_daemon_and_nothing_of_the_extras() -> None:
    pins = lock_pins()
    for requirement in PYPROJECT["project"]["dependencies"]:
        name, version = pinned(requirement)
        assert pins.get(name) == version, f"{requirement} is not in {LOCK.name}: regenerate it (README)"
    for build_requirement in PYPROJECT["build-system"]["requires"]:  # install.sh builds the wheel with them
        if "==" in build_requirement:
            name, version = pinned(build_requirement)
            assert pins.get(name) == version, build_requirement
        else:
            assert build_requirement in pins, build_requirement
    for extra in ("sbatch", "contracts"):
        for requirement in PYPROJECT["project"]["optional-dependencies"][extra]:
            assert pinned(requirement)[0] not in pins, f"{requirement} of [{extra}] is in the daemon's lock"
    blocks = [b for b in re.split(r"\n(?=[a-z0-9])", LOCK.read_text()) if b[:1].isalnum()]
    assert len(blocks) == len(pins)
    for block in blocks:
        assert "--hash=sha256:" in block, block.splitlines()[0]


@dataclass(frozen=True)
class Install:
    venv: Path
    wheel: Path

    def bin(self, name: str) -> str:
        return str(self.venv / "bin" / name)


@pytest.fixture(scope="module")
def daemon_install(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Install]:
    """A fresh venv: the locked dependencies (hash-checked), then the wheel built from a copy of
    the checkout, installed without its extras and without an editable link to the checkout."""
    folder = tmp_path_factory.mktemp("install")
    source = folder / "src"
    shutil.copytree(
        REPO,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(".venv", ".tools", ".git", "var", "build", "*.egg-info", "__pycache__"),
    )
    venv = folder / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "pip"), *PIP_QUIET]

    def run(*args: str) -> None:
        result = subprocess.run([*pip, *args], capture_output=True, text=True, timeout=900)
        assert result.returncode == 0, result.stderr[-3000:]

    run("install", "--require-hashes", "--no-deps", "-r", str(LOCK))
    run("wheel", "--no-deps", "--no-build-isolation", "--wheel-dir", str(folder / "dist"), str(source))
    (wheel,) = (folder / "dist").glob("grid_supervisor-*.whl")
    run("install", "--no-deps", "--no-index", str(wheel))
    shutil.rmtree(source)  # nothing may depend on the checkout it was built from
    yield Install(venv, wheel)


def test_the_wheel_ships_the_contracts_the_errors_and_the_schema(daemon_install: Install) -> None:
    with zipfile.ZipFile(daemon_install.wheel) as wheel:
        names = set(wheel.namelist())
        for contract in CONTRACT_NAMES:
            member = f"grid_contracts/abi/{contract}.json"
            assert member in names
            assert wheel.read(member) == (ABI_DIR / f"{contract}.json").read_bytes()
        assert "supervisor/chain/data/Errors.json" in names
        assert "sbatch_service/schema.graphql" in names
        assert not any(name.startswith(("tests/", "abi/")) for name in names)


def test_a_daemon_only_install_decodes_every_protocol_error(daemon_install: Install, tmp_path: Path) -> None:
    check = """
import json, sys
from eth_abi import encode
from eth_utils import keccak
from grid_protocol.abi import ABI_DIR, load_abi
from supervisor.chain.errors import ALREADY_DONE_ERRORS, ErrorDecoder
import supervisor.cli, supervisor.daemon, supervisor.ops.doctor, supervisor.ops.metrics
decoder = ErrorDecoder.for_protocol()
abis = {name: len(load_abi(name)) for name in sys.argv[1:]}
errors = sorted(
    e["name"] for name in sys.argv[1:] for e in load_abi(name) if e.get("type") == "error"
)
same = decoder.decode(keccak(text="SameStatusError()")[:4])
hot = decoder.decode(keccak(text="JobHotStatusOnly(uint8)")[:4] + encode(["uint8"], [3]))
print(json.dumps({
    "abi_dir": str(ABI_DIR), "abis": abis, "missing": sorted(set(errors) - decoder.names),
    "already_done": [same.already_done, hot.already_done], "names": sorted(ALREADY_DONE_ERRORS & decoder.names),
}))
"""
    result = subprocess.run(
        [daemon_install.bin("python"), "-c", check, *CONTRACT_NAMES],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,  # not the checkout: nothing may come from it
    )
    assert result.returncode == 0, result.stderr[-3000:]
    found = json.loads(result.stdout)
    assert found["abi_dir"].startswith(str(daemon_install.venv)), found["abi_dir"]
    assert set(found["abis"]) == set(CONTRACT_NAMES) and all(found["abis"].values())
    assert found["missing"] == []
    assert found["already_done"] == [True, True]
    assert found["names"] == ["AlreadyDone", "JobHotStatusOnly", "SameStatusError"]


def test_a_daemon_only_install_has_no_server_stack_nor_compiler(
    daemon_install: Install, tmp_path: Path
) -> None:
    modules = [name for names in EXTRA_MODULES.values() for name in names]
    probe = "import importlib.util, sys; print([m for m in sys.argv[1:] if importlib.util.find_spec(m)])"
    result = subprocess.run(
        [daemon_install.bin("python"), "-c", probe, *modules], capture_output=True, text=True, cwd=tmp_path
    )
    assert result.stdout.strip() == "[]", result.stdout + result.stderr
    listed = subprocess.run(
        [daemon_install.bin("pip"), "list", "--format=json", "--disable-pip-version-check"],
        capture_output=True,
        text=True,
    )
    installed = {pinned(f"{p['name']}=={p['version']}")[0] for p in json.loads(listed.stdout)}
    assert not installed & {"starlette", "uvicorn", "graphql-core", "py-solc-x", "pyyaml", "cachetools"}
    checked = subprocess.run([daemon_install.bin("pip"), "check"], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout


@pytest.mark.parametrize(
    ("command", "args", "extra"),
    [
        ("grid-sbatch", ["serve"], "sbatch"),
        ("grid-dev", ["up"], "sbatch"),
        ("grid-contracts", ["compile"], "contracts"),
    ],
)
def test_commands_that_need_an_extra_say_which(
    daemon_install: Install, tmp_path: Path, command: str, args: list[str], extra: str
) -> None:
    result = subprocess.run(
        [daemon_install.bin(command), *args], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert f"lacks the '{extra}' extra" in result.stderr
    assert f"pip install 'grid-supervisor[{extra}]'" in result.stderr


def test_the_installed_doctor_passes_against_the_stack(
    daemon_install: Install, provider_stack: ProviderStack, tmp_path: Path
) -> None:
    process = provider_stack.supervisor()  # its configuration only: the doctor needs no daemon running
    result = subprocess.run(
        [daemon_install.bin("grid-supervisor"), "doctor", "--config", str(process.config)],
        env=process.env,
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[1]: line for line in result.stdout.splitlines() if line.split()[:1] != ["->"]}
    assert lines["contract"].startswith("OK "), result.stdout
    assert lines["rpc"].startswith("OK ") and lines["sbatch"].startswith("OK "), result.stdout
