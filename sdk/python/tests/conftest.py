"""A real `baton serve` for the tests: the binary from BATON_BIN (default
<repo>/target/debug/baton), a temporary data folder, a free port, ready once
`/readyz` answers 200. A failed test shows the log of every server it used."""

from __future__ import annotations

import asyncio
import hashlib
import importlib.metadata
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

import httpx
import pytest

from baton_client import Client, Worker
from baton_client.models import TERMINAL_EVENTS, Event

REPO = Path(__file__).resolve().parents[3]
BATON_BIN = Path(os.environ.get("BATON_BIN") or REPO / "target" / "debug" / "baton")

# Tokens of the server started with auth on.
ADMIN_TOKEN = "admin-token-for-the-python-tests"
VIEWER_TOKEN = "viewer-token-for-the-python-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def make_certificate(folder: Path, name: str = "baton") -> Tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost and its key (PEM files
    `<name>-cert.pem`, `<name>-key.pem`), made with the openssl command the README
    gives."""
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.fail("the TLS tests make their certificates with openssl: apt-get install openssl")
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    # fmt: off
    cmd = [
        openssl, "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "2", "-keyout", str(key), "-out", str(cert), "-subj", f"/CN={name} test",
        "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        "-addext", "basicConstraints=critical,CA:FALSE",
    ]
    # fmt: on
    made = subprocess.run(cmd, capture_output=True, text=True)
    if made.returncode != 0:
        pytest.fail(f"openssl could not make a certificate: {made.stderr}")
    return cert, key


class Server:
    """One `baton serve` on its own data folder; it can be killed and started again
    on the same folder and port. With `tls` (a certificate and its key) it serves
    HTTPS only, at `https://127.0.0.1:<port>`, and `ca` is the certificate."""

    def __init__(
        self,
        folder: Path,
        config: str = "",
        socket: Optional[Path] = None,
        tls: Optional[Tuple[Path, Path]] = None,
    ) -> None:
        if not BATON_BIN.is_file():
            pytest.fail(f"no baton binary at {BATON_BIN}: run `cargo build -p baton`, or set BATON_BIN")
        self.folder = folder
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.ca: Optional[Path] = None
        if tls is not None:
            self.url = f"https://127.0.0.1:{self.port}"
            self.ca = tls[0]
            # Top-level keys go before any [table] of `config`.
            config = f'tls_cert = "{tls[0]}"\ntls_key = "{tls[1]}"\n' + config
        self.log = folder / "server.log"
        self.socket = socket
        (folder / "baton.toml").write_text(config)
        self.proc: Optional[subprocess.Popen[bytes]] = None
        self.start()

    def start(self) -> None:
        cmd = [
            str(BATON_BIN),
            "serve",
            "--config",
            str(self.folder / "baton.toml"),
            "--listen",
            f"127.0.0.1:{self.port}",
            "--store",
            f"sqlite://{self.folder / 'baton.db'}",
            "--durability",
            "normal",
        ]
        if self.socket is not None:
            cmd += ["--listen", f"unix://{self.socket}"]
        with open(self.log, "ab") as log:
            log.write(f"--- {' '.join(cmd)}\n".encode())
            log.flush()
            env = {k: v for k, v in os.environ.items() if not k.startswith("BATON_")}
            self.proc = subprocess.Popen(cmd, cwd=self.folder, stdout=log, stderr=subprocess.STDOUT, env=env)
        verify = ssl.create_default_context(cafile=str(self.ca)) if self.ca else True
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"baton serve exited with {self.proc.returncode}:\n{self.output()}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1, verify=verify).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        pytest.fail(f"baton serve was not ready within 30 s:\n{self.output()}")

    def kill(self, sig: int = signal.SIGKILL) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(sig)
            self.proc.wait(timeout=60)
        self.proc = None

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    servers: List[Server] = getattr(item, "baton_servers", [])
    workers: List[Any] = getattr(item, "baton_workers", [])
    if report.failed:
        for server in servers:
            report.sections.append((f"baton serve on port {server.port}", server.output()[-20000:]))
        for worker in workers:
            report.sections.append((f"worker {worker.name}", worker.output()[-20000:]))


def watch(request: pytest.FixtureRequest, server: Server) -> Server:
    request.node.baton_servers = getattr(request.node, "baton_servers", []) + [server]
    return server


# No test may hang: a blocked read is interrupted after this long.
TEST_TIME_LIMIT = 120


@pytest.fixture(autouse=True)
def _time_limit() -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"the test took more than {TEST_TIME_LIMIT} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(TEST_TIME_LIMIT)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


@pytest.fixture(scope="session")
def _shared_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(tmp_path_factory.mktemp("baton"))
    yield server
    server.kill(signal.SIGTERM)


@pytest.fixture
def server(request: pytest.FixtureRequest, _shared_server: Server) -> Server:
    """The server most tests share (each test works on jobs of its own)."""
    return watch(request, _shared_server)


@pytest.fixture
def own_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server of the test's own, which it may kill and start again."""
    server = watch(request, Server(tmp_path))
    yield server
    server.kill()


@pytest.fixture
def auth_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    """A server with auth on: ADMIN_TOKEN (admin) and VIEWER_TOKEN (viewer)."""

    def digest(token: str) -> str:
        return hashlib.sha256(token.encode()).hexdigest()

    config = (
        "[auth]\ntokens = [\n"
        f'  {{ name = "admin", sha256 = "{digest(ADMIN_TOKEN)}", role = "admin" }},\n'
        f'  {{ name = "viewer", sha256 = "{digest(VIEWER_TOKEN)}", role = "viewer" }},\n'
        "]\n"
    )
    server = watch(request, Server(tmp_path, config))
    yield server
    server.kill()


@pytest.fixture
def baton(server: Server) -> Iterator[Client]:
    with Client(server.url, timeout=10) as client:
        yield client


def unique(prefix: str) -> str:
    """A name no other test uses, for labels and ids."""
    return f"{prefix}-{os.getpid()}-{time.monotonic_ns()}"


def pytest_report_header() -> str:
    import baton_client

    package = Path(baton_client.__file__).parent
    try:
        crewai = f"crewai {importlib.metadata.version('crewai')} (tests/test_crewai.py runs a real crew)"
    except importlib.metadata.PackageNotFoundError:
        crewai = "no crewai here: tests/test_agents.py tests the crew adapter with crew-like objects"
    return f"baton_client {baton_client.__version__} from {package}; baton from {BATON_BIN}; {crewai}"


def history(baton: Client, job_id: str) -> List[Event]:
    """The job's events until its end, read from its event stream as they happen."""
    seen: List[Event] = []
    with baton.events(job=job_id) as events:
        for event in events:
            seen.append(event)
            if event.type in TERMINAL_EVENTS and baton.get(job_id).terminal:
                return seen
    raise AssertionError("the event stream ended")


def of(events: List[Event], kind: str) -> List[Event]:
    """The events of one type, in order."""
    return [e for e in events if e.type == kind]


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30) -> None:
    """Waits until `check()` is true; fails naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"{what} did not happen within {timeout} s")
        time.sleep(0.02)


@contextmanager
def serving(worker: Worker) -> Iterator[Worker]:
    """Runs `worker` on a thread of this process (its own event loop) until the block
    ends, then shuts it down and checks that it returned without an error."""
    errors: List[BaseException] = []

    def main() -> None:
        try:
            asyncio.run(worker.arun())
        except BaseException as e:
            errors.append(e)

    thread = threading.Thread(target=main, name=f"worker-{worker.name}", daemon=True)
    thread.start()
    deadline = time.monotonic() + 15
    while not worker.wait_connected(0.05):
        if errors:
            raise errors[0]
        if time.monotonic() > deadline:
            pytest.fail("the worker was not welcomed within 15 s")
    try:
        yield worker
    finally:
        worker.shutdown()
        thread.join(60)
    assert not thread.is_alive(), "the worker did not end after shutdown()"
    if errors:
        raise errors[0]


TESTS = Path(__file__).resolve().parent


class WorkerProcess:
    """`python -m baton_client worker worker_apps:worker` (tests/worker_apps.py) in a
    process of its own, connected once the server lists it."""

    def __init__(
        self,
        server: Server,
        folder: Path,
        name: str,
        concurrency: int = 4,
        *extra: str,
        env: Optional[Dict[str, str]] = None,
    ) -> None:
        self.name = name
        self.server = server
        self.log = folder / f"{name}.log"
        cmd = [
            sys.executable,
            "-m",
            "baton_client",
            "worker",
            "worker_apps:worker",
            "--url",
            server.url,
            "--name",
            name,
            "--concurrency",
            str(concurrency),
            *extra,
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=TESTS, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, **(env or {})}
            )
        with Client(server.url, ca=server.ca) as baton:
            wait_for(f"worker {name} connecting", lambda: self.proc.poll() is not None or self.listed(baton), 30)
        if self.proc.poll() is not None:
            pytest.fail(f"worker {name} exited with {self.proc.returncode}:\n{self.output()}")

    def listed(self, baton: Client) -> bool:
        return any(w.name == self.name for w in baton.workers())

    def kill(self, sig: int = signal.SIGKILL, timeout: float = 60) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(timeout=timeout)

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@pytest.fixture
def worker_processes(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[List[WorkerProcess]]:
    """Worker processes a test starts (appending to the list); killed at its end, their
    output shown when it fails."""
    started: List[WorkerProcess] = []
    request.node.baton_workers = started
    yield started
    for w in started:
        w.kill()
