"""`input` and `output` of jobs on the test Slurm cluster, against real servers started here.

S3 is moto's standalone server (one per module), HTTP a small server of this test process that
serves downloads (one behind basic authentication) and takes uploads as transfer.sh does. Files
must arrive byte for byte, a failed upload must fail the job with a clear message, and no credential
may appear in the job's output or in any step's environment.
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import secrets
import signal
import subprocess
import sys
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import quote as url_quote

import pytest
import requests

from grid_dev.anvil import free_port
from tests.fixtures.slurm import SlurmCluster
from tests.sbatch_service.slurm_helpers import Finished, render_for_slurm, run_on_slurm

START_TIMEOUT_S = 30.0
SYNC_DEADLINE_S = 40.0
ACCESS_KEY = "AKIAGRIDTEST"
SECRET_KEY = "s3cr'et $(touch {canary}) `id`"
HTTP_USER, HTTP_PASSWORD = "robot", "p@ss'word $(id)"


@dataclass
class S3Server:
    endpoint: str
    client: Any

    def objects(self, bucket: str) -> dict[str, bytes]:
        listed = self.client.list_objects_v2(Bucket=bucket).get("Contents", [])
        return {o["Key"]: self.client.get_object(Bucket=bucket, Key=o["Key"])["Body"].read() for o in listed}


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    import boto3

    port = free_port()
    log = (tmp_path_factory.mktemp("moto") / "moto.log").open("wb")
    server = subprocess.Popen(
        [str(Path(sys.executable).parent / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    endpoint = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + START_TIMEOUT_S
    while True:
        try:
            requests.get(endpoint, timeout=1)
            break
        except requests.ConnectionError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.1)
    client = boto3.client(
        "s3", endpoint_url=endpoint, region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x"
    )
    try:
        yield S3Server(endpoint, client)
    finally:
        os.kill(server.pid, signal.SIGTERM)
        server.wait(timeout=10)


@dataclass
class HttpServer:
    base: str
    downloads: dict[str, bytes] = field(default_factory=dict)
    uploads: dict[str, bytes] = field(default_factory=dict)
    authorizations: list[str] = field(default_factory=list)


@pytest.fixture(scope="module")
def http() -> Iterator[HttpServer]:
    state = HttpServer("")
    expected = "Basic " + base64.b64encode(f"{HTTP_USER}:{HTTP_PASSWORD}".encode()).decode()

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            if status == 401:
                self.send_header("WWW-Authenticate", 'Basic realm="grid"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path.startswith("/private/"):
                state.authorizations.append(self.headers.get("Authorization", ""))
                if self.headers.get("Authorization") != expected:
                    self._answer(401, b"who are you?")
                    return
            name = self.path.rsplit("/", 1)[-1]
            if name not in state.downloads:
                self._answer(404, b"no such file")
                return
            self._answer(200, state.downloads[name])

        def do_PUT(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.path.startswith("/full/"):
                self._answer(507, b"quota exceeded")
                return
            name = self.path.rsplit("/", 1)[-1]
            state.uploads[name] = body
            self._answer(200, f"{state.base}/get/{url_quote('my results')}/{url_quote(name)}\n".encode())

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    state.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def slurm(slurm_cluster: SlurmCluster) -> SlurmCluster:
    return slurm_cluster


def run_job(workflow: dict[str, Any], tmp_path: Path) -> Finished:
    job, script = render_for_slurm(workflow, tmp_path / "storage")
    return run_on_slurm(script, job, tmp_path / "job")


def s3_data(server: S3Server, bucket: str, path: str, secret: str, **more: Any) -> dict[str, Any]:
    return {
        "region": "us-east-1",
        "bucketUrl": f"s3://{bucket}",
        "path": path,
        "accessKeyId": ACCESS_KEY,
        "secretAccessKey": secret,
        "endpointUrl": server.endpoint,
        **more,
    }


def test_s3_input_and_output_with_continuous_sync(slurm: SlurmCluster, s3: S3Server, tmp_path: Path) -> None:
    out, canary = tmp_path / "out", tmp_path / "canary"
    out.mkdir()
    secret = SECRET_KEY.format(canary=canary)
    inputs = {
        "data/a.bin": secrets.token_bytes(256 * 1024),
        "data/sub/b.txt": b"nested\n",
        "database.csv": b"id,name\n1,grid\n",
        "other/x": b"not selected",
    }
    s3.client.create_bucket(Bucket="inputs")
    for key, body in inputs.items():
        s3.client.put_object(Bucket="inputs", Key=key, Body=body)
    s3.client.create_bucket(Bucket="results")
    s3.client.put_object(Bucket="results", Key="run1/stale.txt", Body=b"removed by deleteSync")
    final = secrets.token_bytes(1024 * 1024)
    (tmp_path / "final.bin").write_bytes(final)
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 200, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}, {"key": "SOURCE", "value": str(tmp_path / "final.bin")}],
        # s5cmd's `cp 's3://inputs/data*'`: every key starting with "data", kept relative to the bucket.
        "input": {"s3": s3_data(s3, "inputs", "/data", secret)},
        "inputMode": 0o750,
        "output": {"s3": s3_data(s3, "results", "/run1", secret, deleteSync=True)},
        "continuousOutputSync": True,
        "steps": [
            {
                "name": "look",
                "run": {
                    "shell": "/bin/bash",
                    "command": 'cd "$DEEPSQUARE_INPUT" && find . -type f | sort > "$OUT/listing";'
                    ' stat -c %a data/a.bin > "$OUT/mode"; sha256sum data/a.bin > "$OUT/sha";'
                    ' env > "$OUT/environment"',
                },
            },
            {
                "name": "early",
                "run": {
                    "command": 'echo early > "$DEEPSQUARE_OUTPUT/early.txt";'
                    ' for i in $(seq 400); do [ -e "$OUT/seen" ] && exit 0; sleep 0.1; done; exit 7'
                },
            },
            {"name": "final", "run": {"command": 'cp "$SOURCE" "$DEEPSQUARE_OUTPUT/final.bin"'}},
        ],
    }
    seen: list[float] = []

    def watch() -> None:
        deadline = time.monotonic() + SYNC_DEADLINE_S
        while time.monotonic() < deadline:
            if "run1/early.txt" in s3.objects("results"):
                seen.append(time.monotonic())
                (out / "seen").touch()
                return
            time.sleep(0.5)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    finished = run_job(workflow, tmp_path)
    watcher.join(timeout=5)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert seen, "the output was synchronised while the job ran"
    assert (out / "listing").read_text().splitlines() == [
        "./data/a.bin",
        "./data/sub/b.txt",
        "./database.csv",
    ]
    assert (out / "sha").read_text().split()[0] == hashlib.sha256(inputs["data/a.bin"]).hexdigest()
    assert (out / "mode").read_text() == "750\n"
    environment = (out / "environment").read_text()
    assert ACCESS_KEY not in environment and "s3cr'et" not in environment, "no step sees the credentials"
    assert s3.objects("results") == {"run1/early.txt": b"early\n", "run1/final.bin": final}
    assert "Input contains:" in finished.output and "Output contains:" in finished.output
    assert ACCESS_KEY not in finished.output and "s3cr'et" not in finished.output
    assert not canary.exists()


def test_a_failed_s3_upload_fails_the_job(slurm: SlurmCluster, s3: S3Server, tmp_path: Path) -> None:
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 200, "gpus": 0},
        "output": {"s3": s3_data(s3, "no-such-bucket", "/x", "secret-of-the-failing-job")},
        "steps": [{"name": "write", "run": {"command": 'echo x > "$DEEPSQUARE_OUTPUT/x"'}}],
    }
    finished = run_job(workflow, tmp_path)
    assert finished.state == "FAILED" and finished.exit_code != 0, finished.output
    assert "output: the upload to S3 failed" in finished.output
    assert "secret-of-the-failing-job" not in finished.output


def test_http_input_is_downloaded_with_its_credentials_and_extracted(
    slurm: SlurmCluster, http: HttpServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    payload = secrets.token_bytes(64 * 1024)
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w:gz") as tar:
        for name, body in (("inputs/payload.bin", payload), ("inputs/notes.txt", b"hello\n")):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    http.downloads["inputs.tar.gz"] = archive.getvalue()
    result = secrets.token_bytes(100 * 1024)
    (tmp_path / "result.bin").write_bytes(result)
    url = http.base.replace("http://", f"http://{url_quote(HTTP_USER)}:{url_quote(HTTP_PASSWORD, safe='')}@")
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 200, "gpus": 0},
        "env": [{"key": "OUT", "value": str(out)}, {"key": "SOURCE", "value": str(tmp_path / "result.bin")}],
        "input": {"http": {"url": f"{url}/private/inputs.tar.gz"}},
        "output": {"http": {"url": f"{http.base}/upload/"}},
        "continuousOutputSync": True,
        "steps": [
            {
                "name": "check",
                "run": {
                    "command": 'cd "$DEEPSQUARE_INPUT" && sha256sum inputs/payload.bin > "$OUT/sha";'
                    ' cat inputs/notes.txt > "$OUT/notes"; cp "$SOURCE" "$DEEPSQUARE_OUTPUT/result.bin"'
                },
            }
        ],
    }
    finished = run_job(workflow, tmp_path)
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    assert (out / "sha").read_text().split()[0] == hashlib.sha256(payload).hexdigest()
    assert (out / "notes").read_text() == "hello\n"
    assert http.uploads["result.bin"] == result, "one output file is uploaded as it is"
    assert f"{http.base}/get/my results/result.bin" in finished.output, "the answer is printed URL-decoded"
    assert "Continuous output sync is not available with HTTP" in finished.output
    assert HTTP_PASSWORD not in finished.output and url_quote(HTTP_PASSWORD, safe="") not in finished.output
    assert http.authorizations[-1].startswith("Basic ")


def test_several_output_files_are_zipped_and_a_failed_upload_fails_the_job(
    slurm: SlurmCluster, http: HttpServer, tmp_path: Path
) -> None:
    files = {"a.txt": b"first\n", "sub/b.bin": secrets.token_bytes(10_000)}
    source = tmp_path / "files"
    for name, body in files.items():
        (source / name).parent.mkdir(parents=True, exist_ok=True)
        (source / name).write_bytes(body)
    workflow = {
        "resources": {"tasks": 1, "cpusPerTask": 1, "memPerCpu": 200, "gpus": 0},
        "env": [{"key": "SOURCE", "value": str(source)}],
        "output": {"http": {"url": f"{http.base}/upload/"}},
        "steps": [{"name": "write", "run": {"command": 'cp -r "$SOURCE/." "$DEEPSQUARE_OUTPUT/"'}}],
    }
    finished = run_job(workflow, tmp_path / "zip")
    assert (finished.state, finished.exit_code) == ("COMPLETED", 0), finished.output
    with zipfile.ZipFile(io.BytesIO(http.uploads["output.zip"])) as uploaded:
        assert {name: uploaded.read(f"output/{name}") for name in files} == files
    workflow["output"] = {"http": {"url": f"{http.base}/full/"}}
    failed = run_job(workflow, tmp_path / "full")
    assert failed.state == "FAILED" and failed.exit_code != 0, failed.output
    assert "output: the upload failed: quota exceeded" in failed.output
