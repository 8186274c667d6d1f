"""Handlers declared with `process=True`: each attempt in a child process that pause,
resume and stop reach with signals, whether it calls pause points or not."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import List

import worker_apps
from baton_client import Client, Worker

from conftest import Server, WorkerProcess, serving, unique, wait_for


def count(path: Path) -> int:
    try:
        return int(path.read_text() or 0)
    except (FileNotFoundError, ValueError):
        return 0


def test_a_process_handler_reports_checkpoints_and_fails_like_any_other(server: Server, baton: Client) -> None:
    kind = unique("py-proc")
    worker = Worker(server.url)
    worker.handler(kind, process=True)(worker_apps.checkpoints)
    worker.handler(kind + "-fails", process=True)(worker_apps.fails)

    with serving(worker):
        job = baton.submit(kind)
        failing = baton.submit(kind + "-fails", max_attempts=1)
        done = baton.wait(job.id, timeout=60)
        failed = baton.wait(failing.id, timeout=60)
    assert done.state == "completed", done.error
    assert done.result["pid"] != os.getpid()
    assert done.result["checkpoint"] == {"n": 1} and done.result["attempt"] == 1
    assert [e.type for e in baton.job_events(job.id)] == [
        "job.submitted",
        "job.started",
        "job.step",
        "job.progress",
        "job.log",
        "job.checkpoint",
        "job.output",
        "job.completed",
    ]
    assert done.step == "child" and done.message == "half"
    assert failed.state == "failed" and failed.error is not None
    assert failed.error.message.startswith("RuntimeError: failed in the child"), failed.error.message
    assert "worker_apps.py" in failed.error.message and "in fails" in failed.error.message


def test_a_process_handler_without_pause_points_is_paused_resumed_and_stopped_with_signals(
    server: Server, baton: Client, tmp_path: Path
) -> None:
    kind = unique("py-busy")
    worker = Worker(server.url)
    worker.handler(kind, process=True)(worker_apps.busy)
    counter = tmp_path / "count"

    with serving(worker):
        job = baton.submit(kind, {"file": str(counter), "until": 100_000})
        wait_for("the child counting", lambda: count(counter) >= 3)
        baton.pause(job.id)
        # SIGSTOP: the count stands still, though the handler has no pause point.
        wait_for("the count to stand still", lambda: still(counter, 0.4))
        held = count(counter)
        time.sleep(0.4)
        assert count(counter) == held
        assert baton.get(job.id).state == "paused"

        baton.resume(job.id)
        wait_for("the count to go on", lambda: count(counter) >= held + 3)

        # SIGTERM raises Stopped in the handler: the job ends cancelled.
        baton.stop(job.id)
        assert baton.wait(job.id, timeout=30).state == "cancelled"
        stopped = count(counter)
        time.sleep(0.3)
        assert count(counter) == stopped, "the child went on after the stop"

        # Paused, then stopped with force: SIGKILL, at once.
        other = tmp_path / "other"
        job = baton.submit(kind, {"file": str(other), "until": 100_000})
        wait_for("the child counting", lambda: count(other) >= 2)
        baton.pause(job.id)
        baton.stop(job.id, force=True)
        assert baton.wait(job.id, timeout=30).state == "cancelled"


def still(path: Path, seconds: float) -> bool:
    before = count(path)
    time.sleep(seconds)
    return count(path) == before


def test_a_process_handler_that_cannot_be_pickled_fails_with_a_message(server: Server, baton: Client) -> None:
    kind = unique("py-local")
    worker = Worker(server.url)
    ran: List[int] = []

    def local(ctx: object, payload: object) -> None:  # not importable: spawn cannot find it
        ran.append(1)

    worker.handler(kind, process=True)(local)
    with serving(worker):
        done = baton.wait(baton.submit(kind, max_attempts=3).id, timeout=60)
    assert done.state == "failed" and done.attempt == 1 and not ran
    assert done.error is not None and "cannot start the handler's process" in done.error.message


def test_a_process_handler_dies_with_a_worker_killed_with_sigkill(
    own_server: Server, tmp_path: Path, worker_processes: List[WorkerProcess]
) -> None:
    counter = tmp_path / "count"
    worker = WorkerProcess(own_server, tmp_path, "proc-killed", 1)
    worker_processes.append(worker)
    with Client(own_server.url) as baton:
        job = baton.submit("py-busy-process", {"file": str(counter), "until": 100_000}, max_recoveries=0)
        wait_for("the child counting", lambda: count(counter) >= 3)
        worker.kill()
        # The child notices its parent is gone and ends: nothing runs the job twice.
        wait_for("the child to end", lambda: still(counter, 0.5), timeout=10)
        wait_for("the crash", lambda: baton.get(job.id).state in ("failed", "crashed", "queued"))
