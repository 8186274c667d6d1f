"""The Python worker against a real server: handlers run and report, control reaches
them at their pause points, exceptions fail jobs with their tracebacks, and a worker
that shuts down or loses its server behaves as DESIGN.md section 11 says."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

import httpx
import pytest

from baton_client import (
    Client,
    Context,
    Event,
    Fatal,
    Invalid,
    Job,
    MessageTooLarge,
    Retryable,
    Stopped,
    SyncContext,
    Worker,
    WorkerError,
    job_spec,
)

from conftest import ADMIN_TOKEN, VIEWER_TOKEN, Server, WorkerProcess, history, serving, unique, wait_for, watch


def types(events: List[Event]) -> List[str]:
    return [e.type for e in events]


def checkpoints(server: Server, job_id: str) -> Any:
    r = httpx.get(f"{server.url}/api/jobs/{job_id}/checkpoints", timeout=10)
    r.raise_for_status()
    return r.json()


def test_a_sync_handler_reports_progress_and_its_result_in_order(server: Server, baton: Client) -> None:
    kind = unique("py-report")
    worker = Worker(server.url, concurrency=2)
    durable: List[Any] = []

    @worker.handler(kind)
    def report(ctx: SyncContext, payload: Dict[str, int]) -> Dict[str, Any]:
        assert threading.current_thread() is not threading.main_thread()
        ctx.step("fetch")
        ctx.progress(0.25, "a quarter")
        ctx.log("fetched 3 pages")
        ctx.output("token ")
        ctx.checkpoint({"page": 3})
        # Durable once checkpoint returns: the API has it.
        durable.append(checkpoints(server, ctx.job_id))
        ctx.progress(0.75, "three quarters")
        return {"sum": payload["a"] + payload["b"], "attempt": ctx.attempt, "resumed": ctx.last_checkpoint}

    with serving(worker):
        job = baton.submit(kind, {"a": 1, "b": 2}, labels={"test": "report"})
        events = history(baton, job.id)
    assert types(events) == [
        "job.submitted",
        "job.started",
        "job.step",
        "job.progress",
        "job.log",
        "job.output",
        "job.checkpoint",
        "job.progress",
        "job.completed",
    ]
    assert events[3].data == {"progress": 0.25, "message": "a quarter"}
    assert events[7].data == {"progress": 0.75, "message": "three quarters"}
    assert events[6].data["checkpoint"] == {"page": 3} and events[6].data["step"] == "fetch"
    assert '"page": 3' in str(durable[0]).replace("'", '"')
    done = baton.get(job.id)
    assert done.state == "completed"
    assert done.result == {"sum": 3, "attempt": 1, "resumed": {"page": 3}}
    assert done.step == "fetch" and done.message == "three quarters"
    log = httpx.get(f"{server.url}/api/jobs/{job.id}/logs", timeout=10).text
    assert "fetched 3 pages" in log


def test_an_async_handler_runs_on_the_loop_and_reports_the_same_way(server: Server, baton: Client) -> None:
    kind = unique("py-async")
    worker = Worker(server.url)

    @worker.handler(kind)
    async def report(ctx: Context, payload: Dict[str, int]) -> Dict[str, Any]:
        asyncio.get_running_loop()  # on the worker's loop
        await ctx.step("fetch")
        await ctx.progress(0.5, "half")
        await ctx.checkpoint({"n": payload["n"]})
        await ctx.log("logged")
        return {"n": payload["n"], "checkpoint": ctx.last_checkpoint, "kind": ctx.kind}

    with serving(worker):
        jobs = [baton.submit(kind, {"n": n}) for n in range(5)]
        done = [baton.wait(j.id, timeout=30) for j in jobs]
    assert [d.result for d in done] == [{"n": n, "checkpoint": {"n": n}, "kind": kind} for n in range(5)]
    assert types(baton.job_events(jobs[0].id)) == [
        "job.submitted",
        "job.started",
        "job.step",
        "job.progress",
        "job.checkpoint",
        "job.log",
        "job.completed",
    ]


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_pause_holds_the_handler_at_its_next_pause_point_resume_continues_and_stop_cancels(
    server: Server, baton: Client, flavour: str
) -> None:
    kind = unique(f"py-pause-{flavour}")
    worker = Worker(server.url)
    ticks: List[int] = []
    ended: List[str] = []

    if flavour == "sync":

        @worker.handler(kind)
        def tick(ctx: SyncContext, payload: Any) -> None:
            try:
                while True:
                    ticks.append(len(ticks))
                    ctx.progress(None, f"tick {len(ticks)}")
                    time.sleep(0.02)
            except Stopped:
                ended.append("stopped")
                raise

    else:

        @worker.handler(kind)
        async def atick(ctx: Context, payload: Any) -> None:
            try:
                while True:
                    ticks.append(len(ticks))
                    await ctx.progress(None, f"tick {len(ticks)}")
                    await asyncio.sleep(0.02)
            except Stopped:
                ended.append("stopped")
                raise

    with serving(worker):
        job = baton.submit(kind)
        wait_for("ticks", lambda: len(ticks) >= 3)
        assert baton.pause(job.id).state == "paused"
        # The handler stops at its next pause point (the progress after the pause).
        wait_for("the handler to block", lambda: stable(ticks, 0.3))
        held = len(ticks)
        time.sleep(0.3)
        assert len(ticks) == held, "a paused handler went on"
        assert baton.get(job.id).state == "paused"

        assert baton.resume(job.id).state == "running"
        wait_for("ticks after the resume", lambda: len(ticks) >= held + 3)

        baton.stop(job.id)
        done = baton.wait(job.id, timeout=30)
        assert done.state == "cancelled"
        assert ended == ["stopped"]
        kinds = types(baton.job_events(job.id))
        assert kinds.index("job.paused") < kinds.index("job.resumed") < kinds.index("job.cancelled")


def stable(values: List[int], seconds: float) -> bool:
    before = len(values)
    time.sleep(seconds)
    return len(values) == before


def test_stop_while_paused_ends_the_job_cancelled(server: Server, baton: Client) -> None:
    kind = unique("py-stop-paused")
    worker = Worker(server.url)
    started = threading.Event()

    @worker.handler(kind)
    def wait(ctx: SyncContext, payload: Any) -> None:
        started.set()
        while True:
            ctx.pause_point()
            ctx.cancel_event.wait(0.05)

    with serving(worker):
        job = baton.submit(kind)
        assert started.wait(10)
        baton.pause(job.id)
        baton.stop(job.id)
        assert baton.wait(job.id, timeout=30).state == "cancelled"


def test_a_handler_exception_fails_the_job_with_its_traceback(server: Server, baton: Client) -> None:
    kind = unique("py-raise")
    worker = Worker(server.url)

    @worker.handler(kind)
    def parse(ctx: SyncContext, payload: Dict[str, str]) -> None:
        int(payload["page"])

    @worker.handler(kind + "-retry")
    def flaky(ctx: SyncContext, payload: Any) -> None:
        raise Retryable(f"attempt {ctx.attempt}: the site answered 503")

    @worker.handler(kind + "-fatal")
    def bad(ctx: SyncContext, payload: Any) -> None:
        raise Fatal("the page is gone for good")

    @worker.handler(kind + "-nonjson")
    async def unjson(ctx: Context, payload: Any) -> Any:
        return {"when": object()}

    fast = {"initial": "50ms", "max": "50ms"}
    with serving(worker):
        plain = baton.submit(kind, {"page": "x"}, max_attempts=1)
        retry = baton.submit(kind + "-retry", max_attempts=2, backoff=fast)
        fatal = baton.submit(kind + "-fatal", max_attempts=3, backoff=fast)
        nonjson = baton.submit(kind + "-nonjson", max_attempts=3, backoff=fast)
        done = {j.id: baton.wait(j.id, timeout=30) for j in (plain, retry, fatal, nonjson)}

    failed = done[plain.id]
    assert failed.state == "failed" and failed.error is not None
    message = failed.error.message
    assert message.startswith("ValueError: invalid literal for int()"), message
    assert "Traceback (most recent call last)" in message and "in parse" in message
    assert "int(payload[\"page\"])" in message
    assert "baton_client" not in message, "the worker's own frames are left out"

    # Retryable: a second attempt, then failed; Fatal and a result that is not JSON:
    # failed at once with attempts left.
    retried, fatal_, unjsoned = done[retry.id], done[fatal.id], done[nonjson.id]
    assert retried.state == "failed" and retried.attempt == 2
    assert retried.error is not None and "attempt 2: the site answered 503" in retried.error.message
    assert types(baton.job_events(retry.id)).count("job.started") == 2
    assert fatal_.state == "failed" and fatal_.attempt == 1
    assert fatal_.error is not None and fatal_.error.message.startswith("the page is gone for good")
    assert unjsoned.state == "failed" and unjsoned.attempt == 1
    assert unjsoned.error is not None and "not JSON" in unjsoned.error.message


def test_a_checkpoint_or_result_over_the_message_limit_is_refused_in_python(server: Server, baton: Client) -> None:
    kind = unique("py-large")
    worker = Worker(server.url)
    big = "x" * (1 << 20)

    @worker.handler(kind)
    def large(ctx: SyncContext, payload: Any) -> str:
        try:
            ctx.checkpoint({"blob": big})
        except MessageTooLarge as e:
            ctx.log(f"refused: {e}")
        ctx.output(big + big)  # cut into pieces, not refused
        return big

    with serving(worker):
        job = baton.submit(kind, max_attempts=2)
        done = baton.wait(job.id, timeout=30)
    assert done.state == "failed" and done.attempt == 1
    assert done.error is not None and "result is too large" in done.error.message
    log = httpx.get(f"{server.url}/api/jobs/{job.id}/logs", timeout=10).text
    assert "refused: too_large: the checkpoint message is" in log
    assert types(baton.job_events(job.id)).count("job.checkpoint") == 0


def test_a_job_of_a_workflow_reads_its_parents_results(server: Server, baton: Client) -> None:
    kind = unique("py-dag")
    worker = Worker(server.url)

    @worker.handler(kind)
    def step(ctx: SyncContext, payload: Dict[str, Any]) -> Any:
        if payload["op"] == "sum":
            parents = ctx.parent_results()
            assert set(ctx.parents) == {"left", "right"}
            assert all(p.state == "completed" for p in ctx.parents.values())
            return {"sum": parents["left"]["n"] + ctx.parent_result("right")["n"]}
        return {"n": payload["n"]}

    with serving(worker):
        flow = baton.submit_workflow(
            {
                "left": job_spec(kind, {"op": "n", "n": 2}),
                "right": job_spec(kind, {"op": "n", "n": 40}),
                "total": job_spec(kind, {"op": "sum"}, depends_on=["left", "right"]),
            }
        )
        total = baton.wait(flow.jobs["total"], timeout=30)
    assert total.state == "completed" and total.result == {"sum": 42}, total.error


def test_a_refused_worker_raises_instead_of_retrying(server: Server, auth_server: Server) -> None:
    native = Worker(server.url)
    native.handler("command")(lambda ctx, payload: None)
    with pytest.raises(WorkerError) as refused:
        asyncio.run(asyncio.wait_for(native.arun(), 20))
    assert refused.value.code == "invalid_hello" and "run by the server itself" in refused.value.message

    for token, status in ((None, 401), (VIEWER_TOKEN, 403)):
        w = Worker(auth_server.url, token=token)
        w.handler("py-auth")(lambda ctx, payload: None)
        with pytest.raises(WorkerError) as e:
            asyncio.run(asyncio.wait_for(w.arun(), 20))
        assert e.value.status == status, e.value

    with pytest.raises(ValueError, match="no handlers"):
        asyncio.run(Worker(server.url).arun())

    admin = Worker(auth_server.url, token=ADMIN_TOKEN)

    @admin.handler("py-auth")
    def hello(ctx: SyncContext, payload: Any) -> str:
        return "hello"

    with serving(admin), Client(auth_server.url, token=ADMIN_TOKEN) as baton:
        assert baton.wait(baton.submit("py-auth").id, timeout=30).result == "hello"


def test_shutdown_on_sigterm_takes_no_more_jobs_and_lets_the_running_one_end(
    own_server: Server, tmp_path: Path, worker_processes: List[WorkerProcess]
) -> None:
    w = WorkerProcess(own_server, tmp_path, unique("graceful"), 2)
    worker_processes.append(w)
    with Client(own_server.url) as baton:
        first = baton.submit("py-slow", {"seconds": 1.5})
        with baton.events(job=first.id) as events:
            for event in events:
                if event.type == "job.progress":
                    break
        w.proc.send_signal(signal.SIGTERM)
        wait_for("slots 0", lambda: [x.slots for x in baton.workers()] == [0])
        second = baton.submit("py-slow", {"seconds": 0.1})
        assert w.proc.wait(timeout=30) == 0
        done = baton.get(first.id)
        assert done.state == "completed" and done.result["slept"] == 1.5
        assert baton.get(second.id).state == "queued"
        assert baton.workers() == []
    assert "taking no more jobs" in w.output()


def test_a_worker_reconnects_after_its_server_restarts_and_its_lost_attempt_runs_again(
    own_server: Server,
) -> None:
    worker = Worker(own_server.url, max_backoff=0.5)
    kind = unique("py-reconnect")
    runs: List[int] = []
    lost: List[str] = []

    @worker.handler(kind)
    def run(ctx: SyncContext, payload: Dict[str, float]) -> Dict[str, int]:
        runs.append(ctx.job.recoveries)
        try:
            started = time.monotonic()
            while time.monotonic() - started < payload["seconds"]:
                ctx.progress(None, "working")
                time.sleep(0.05)
        except Stopped:
            lost.append(f"run {len(runs)}")
            raise
        return {"recoveries": ctx.job.recoveries}

    with serving(worker), Client(own_server.url) as baton:
        first_id = worker.worker_id
        job = baton.submit(kind, {"seconds": 2.0}, max_recoveries=3)
        wait_for("the first attempt", lambda: len(runs) == 1)
        own_server.kill()
        own_server.start()
        # The old attempt's pause points raise Stopped; the job is recovered and handed
        # to the same worker's new connection.
        done = baton.wait(job.id, timeout=60)
        assert done.state == "completed" and done.result == {"recoveries": 1}, done
        assert runs == [0, 1] and lost == ["run 1"]
        assert worker.worker_id != first_id
        kinds = types(baton.job_events(job.id))
        assert kinds.count("job.started") == 2 and "job.recovered" in kinds


def test_ctx_job_is_the_job_as_handed_over(server: Server, baton: Client) -> None:
    kind = unique("py-job")
    worker = Worker(server.url, queues=[unique("q")])
    seen: List[Job] = []

    @worker.handler(kind)
    def look(ctx: SyncContext, payload: Any) -> None:
        seen.append(ctx.job)

    with serving(worker):
        job = baton.submit(kind, {"p": 1}, queue=worker.queues[0], labels={"a": "b"})
        assert baton.wait(job.id, timeout=30).state == "completed"
    assert seen[0].id == job.id and seen[0].labels == {"a": "b"} and seen[0].payload == {"p": 1}
    assert seen[0].queue == worker.queues[0] and seen[0].attempt == 1


def test_remote_kinds_lets_clients_submit_before_any_worker_connects(
    own_server: Server, tmp_path: Path
) -> None:
    kind = unique("py-later")
    with Client(own_server.url) as baton:
        with pytest.raises(Invalid):
            baton.submit(kind)
        own_server.kill()
        (own_server.folder / "baton.toml").write_text(f'remote_kinds = ["{kind}"]\n')
        own_server.start()
        job = baton.submit(kind, {"n": 1})
        assert job.state == "queued"
        worker = Worker(own_server.url)
        worker.handler(kind)(lambda ctx, payload: payload)
        with serving(worker):
            assert baton.wait(job.id, timeout=30).result == {"n": 1}


def test_a_handler_that_ignores_a_stop_is_cut_off_after_the_jobs_grace(server: Server, baton: Client) -> None:
    kind = unique("py-stubborn")
    worker = Worker(server.url)
    release = threading.Event()
    reported: List[str] = []

    @worker.handler(kind)
    def stubborn(ctx: SyncContext, payload: Any) -> str:
        release.wait(30)  # no pause point
        reported.append("returned")
        return "too late"

    with serving(worker):
        job = baton.submit(kind, grace="500ms")
        wait_for("the job to run", lambda: baton.get(job.id).state == "running")
        asked = time.monotonic()
        baton.stop(job.id)
        done = baton.wait(job.id, timeout=30)
        took = time.monotonic() - asked
        release.set()
        wait_for("the handler to return", lambda: reported == ["returned"])
    assert done.state == "cancelled" and 0.4 < took < 10, took
    assert baton.get(job.id).state == "cancelled" and baton.get(job.id).result is None


def test_a_worker_connects_over_a_local_socket(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    sock = tmp_path / "baton.sock"
    server = watch(request, Server(tmp_path, socket=sock))
    try:
        worker = Worker(f"unix://{sock}")
        worker.handler("py-socket")(lambda ctx, payload: {"echo": payload})
        with serving(worker), Client(f"unix://{sock}") as baton:
            job = baton.submit("py-socket", [1, 2])
            assert baton.wait(job.id, timeout=30).result == {"echo": [1, 2]}
    finally:
        server.kill()
