"""A server that speaks HTTPS (tls_cert, tls_key): the client and the worker verify
its certificate with the system's roots or `ca`, and refuse it, saying how to trust
it, when neither vouches for it. The certificate is self-signed, made by openssl as
the README says, so the system's roots never trust it."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Iterator, List

import pytest

from baton_client import (
    AsyncClient,
    BatonConnectionError,
    Client,
    UntrustedCertificate,
    Worker,
    WorkerError,
)

from conftest import TESTS, Server, WorkerProcess, make_certificate, serving, unique, watch


@pytest.fixture
def tls_server(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Server]:
    server = watch(request, Server(tmp_path, tls=make_certificate(tmp_path)))
    yield server
    server.kill()


def trusted_jobs(server: Server) -> int:
    with Client(server.url, ca=server.ca) as baton:
        return sum(1 for _ in baton.list())


def test_a_client_given_the_certificate_talks_to_a_tls_server(tls_server: Server) -> None:
    assert tls_server.url.startswith("https://") and tls_server.ca is not None
    with Client(tls_server.url, ca=tls_server.ca) as baton:
        job = baton.submit("command", command=["echo '::result 7'"], shell=True)
        assert baton.wait(job.id, timeout=30).result == 7  # the wait follows the event stream
        with baton.events(job=job.id) as events:
            assert next(events).type == "job.submitted"
    # By name as well as by address; the path may be a str.
    by_name = tls_server.url.replace("127.0.0.1", "localhost")
    with Client(by_name, ca=str(tls_server.ca)) as baton:
        assert baton.get(job.id).state == "completed"

    async def main() -> None:
        async with AsyncClient(tls_server.url, ca=tls_server.ca) as baton:
            assert (await baton.get(job.id)).result == 7
            async with baton.events(job=job.id) as events:
                assert (await events.__anext__()).type == "job.submitted"

    asyncio.run(main())


def test_a_client_refuses_a_certificate_it_does_not_trust_saying_how_to_trust_it(
    tls_server: Server, tmp_path: Path
) -> None:
    side = tmp_path / "ran"
    # The system's roots do not know a self-signed certificate.
    with Client(tls_server.url) as baton:
        with pytest.raises(UntrustedCertificate) as refused:
            baton.submit("command", command=["touch", str(side)])
    e = refused.value
    assert isinstance(e, BatonConnectionError) and e.code == "untrusted_certificate"
    assert e.url == f"{tls_server.url}/api/jobs"
    assert str(e).startswith(f"cannot talk to Baton at {tls_server.url}/api/jobs securely: ")
    assert "self-signed certificate" in str(e)
    assert "its certificate is not trusted: pass ca=" in str(e)

    # Nor does another certificate; an event stream is not tried again and again.
    other, _ = make_certificate(tmp_path, "stranger")
    with Client(tls_server.url, ca=other) as baton:
        with pytest.raises(UntrustedCertificate):
            list(baton.list())
        started = time.monotonic()
        with pytest.raises(UntrustedCertificate):
            with baton.events(after=0, reconnect_for=None) as events:
                next(events)
        assert time.monotonic() - started < 5

    async def main() -> None:
        async with AsyncClient(tls_server.url) as baton:
            with pytest.raises(UntrustedCertificate, match="pass ca="):
                await baton.submit("command", command=["touch", str(side)])

    asyncio.run(main())

    time.sleep(0.3)
    assert not side.exists(), "a job ran although the server was not trusted"
    assert trusted_jobs(tls_server) == 0


def test_a_ca_that_is_no_certificate_is_refused_at_once(tls_server: Server, tmp_path: Path) -> None:
    _, key = make_certificate(tmp_path, "other")
    with pytest.raises(ValueError, match=f"invalid ca '{key}': it holds no PEM certificate"):
        Client(tls_server.url, ca=key)
    with pytest.raises(ValueError, match="no such file"):
        AsyncClient(tls_server.url, ca=tmp_path / "missing.pem")
    with pytest.raises(ValueError, match="it holds no PEM certificate"):
        Worker(tls_server.url, ca=key)


def test_plain_http_to_a_tls_server_fails_as_a_connection_error(tls_server: Server) -> None:
    plain = tls_server.url.replace("https://", "http://")
    with Client(plain, timeout=5) as baton:
        with pytest.raises(BatonConnectionError) as failed:
            list(baton.list())
    assert not isinstance(failed.value, UntrustedCertificate)
    assert failed.value.url.startswith(plain)


def test_a_worker_given_the_certificate_serves_jobs_over_wss(tls_server: Server) -> None:
    kind = unique("py-tls")
    worker = Worker(tls_server.url, ca=tls_server.ca, name="tls-worker")
    worker.handler(kind)(lambda ctx, payload: {"echo": payload, "attempt": ctx.attempt})
    with serving(worker), Client(tls_server.url, ca=tls_server.ca) as baton:
        assert [w.name for w in baton.workers()] == ["tls-worker"]
        job = baton.submit(kind, {"n": 1})
        done = baton.wait(job.id, timeout=30)
    assert done.state == "completed" and done.result == {"echo": {"n": 1}, "attempt": 1}


def test_a_worker_refuses_a_certificate_it_does_not_trust_and_ends(tls_server: Server) -> None:
    kind = unique("py-tls")
    worker = Worker(tls_server.url, name="untrusting")
    worker.handler(kind)(lambda ctx, payload: None)
    started = time.monotonic()
    with pytest.raises(WorkerError) as refused:
        asyncio.run(asyncio.wait_for(worker.arun(handle_signals=False), 20))
    assert time.monotonic() - started < 10, "the worker kept trying"
    e = refused.value
    assert e.code == "untrusted_certificate"
    assert e.message.startswith(f"cannot talk to Baton at {tls_server.url} securely: self-signed certificate")
    assert "Worker(..., ca=FILE), or --ca FILE or BATON_CA" in e.message
    with Client(tls_server.url, ca=tls_server.ca) as baton:
        assert baton.workers() == []


def test_a_worker_process_takes_the_certificate_from_ca_or_baton_ca(
    tls_server: Server, tmp_path: Path, worker_processes: List[WorkerProcess]
) -> None:
    assert tls_server.ca is not None
    # Without it: exit code 1 and a message saying what to pass.
    cmd = [sys.executable, "-m", "baton_client", "worker", "worker_apps:worker", "--url", tls_server.url]
    out = subprocess.run(cmd, cwd=TESTS, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert f"error: untrusted_certificate: cannot talk to Baton at {tls_server.url} securely" in out.stderr
    assert "--ca FILE or BATON_CA" in out.stderr
    # A --ca that is no certificate: a usage error naming the file.
    _, key = make_certificate(tmp_path, "other")
    out = subprocess.run(cmd + ["--ca", str(key)], cwd=TESTS, capture_output=True, text=True, timeout=60)
    assert out.returncode == 2 and f"--ca: invalid ca '{key}': it holds no PEM certificate" in out.stderr

    # With --ca, and with BATON_CA: each runs jobs to completion.
    by_flag = WorkerProcess(tls_server, tmp_path, "by-flag", 2, "--ca", str(tls_server.ca))
    by_env = WorkerProcess(tls_server, tmp_path, "by-env", 2, env={"BATON_CA": str(tls_server.ca)})
    worker_processes.extend([by_flag, by_env])
    with Client(tls_server.url, ca=tls_server.ca) as baton:
        assert sorted(w.name for w in baton.workers()) == ["by-env", "by-flag"]
        jobs = [baton.submit("py-many", {"file": str(tmp_path / "ran")}) for _ in range(4)]
        pids = {baton.wait(job.id, timeout=60).result["pid"] for job in jobs}
    assert pids <= {by_flag.proc.pid, by_env.proc.pid}
    assert len((tmp_path / "ran").read_text().splitlines()) == 4
