"""Jobs: submit and wait, lists across pages, and live control of a running command."""

from __future__ import annotations

from pathlib import Path

import pytest

from baton_client import Client, Conflict, Event, EventStream, job_spec

from conftest import Server, unique, wait_for, watch


def next_event(stream: EventStream, type: str) -> Event:
    for event in stream:
        if event.type == type:
            return event
    raise AssertionError(f"the stream ended before a {type} event")


def test_a_command_job_runs_and_its_result_comes_back(baton: Client) -> None:
    job = baton.submit(
        "command",
        command=["echo ::progress 0.5 halfway; echo '::result {\"rows\": 7}'"],
        shell=True,
        labels={"test": "result"},
        timeout=30,
        max_attempts=1,
    )
    assert job.kind == "command" and job.labels == {"test": "result"}
    assert job.timeout == "30s" and job.max_attempts == 1

    done = baton.wait(job.id, timeout=30)
    assert done.state == "completed" and done.terminal
    assert done.result == {"rows": 7}
    assert done.progress == 1.0 and done.message == "halfway"
    assert done.error is None and done.finished_at is not None
    assert done.raw["result"] == {"rows": 7}
    assert baton.get(job.id) == done


def test_a_client_id_makes_submit_idempotent(baton: Client) -> None:
    id = unique("idem")
    first = baton.submit("command", command=["true"], id=id, delay="1h")
    again = baton.submit("command", command=["false"], id=id, delay="1h")
    assert first.id == again.id == id
    assert again.command == ["true"] and again.state == "scheduled"


def test_a_failing_job_ends_failed_with_its_exit_code(baton: Client) -> None:
    job = baton.submit("command", command=["exit 3"], shell=True, max_attempts=1)
    done = baton.wait(job.id, timeout=30)
    assert done.state == "failed"
    assert done.error is not None and done.error.code == "exit_code"
    assert "3" in done.error.message


def test_list_follows_the_cursor_over_every_page(baton: Client) -> None:
    label = unique("page")
    specs = [job_spec("command", command=["true"], delay="1h", labels={"batch": label}) for _ in range(120)]
    submitted = baton.submit_many(specs)
    assert len(submitted) == 120 and all(j.state == "scheduled" for j in submitted)
    ids = {j.id for j in submitted}

    # Pages of 100 (the default) and of 7: every job once, in the same order.
    listed = [j.id for j in baton.list(label=f"batch:{label}")]
    assert len(listed) == 120 and set(listed) == ids
    small_pages = [j.id for j in baton.list(label=("batch", label), page_size=7)]
    assert small_pages == listed

    assert len(list(baton.list(state="scheduled", label=f"batch:{label}"))) == 120
    assert len(list(baton.list(state=["queued", "running"], label=f"batch:{label}"))) == 0
    assert list(baton.list(state="completed", label=f"batch:{label}")) == []
    # Newest first.
    created = [j.created_at for j in baton.list(label=f"batch:{label}")]
    assert created == sorted(created, reverse=True)


def test_a_running_command_job_is_paused_resumed_stopped_retried_cancelled_and_deleted(baton: Client) -> None:
    # Reports progress, then runs until it is stopped; its attempt is in the message.
    script = 'echo "::progress 0.1 attempt $BATON_ATTEMPT"; exec sleep 300'
    job = baton.submit("command", command=[script], shell=True, grace="5s")
    with baton.events(job=job.id) as events:
        next_event(events, "job.progress")
        assert baton.get(job.id).state == "running"

        assert baton.pause(job.id).state == "paused"
        next_event(events, "job.paused")
        assert baton.get(job.id).state == "paused"
        # Paused is not running: a second pause is refused.
        try:
            baton.pause(job.id)
            raise AssertionError("pausing a paused job was accepted")
        except Conflict as e:
            assert e.status == 409 and e.code == "illegal_transition"

        assert baton.resume(job.id).state == "running"
        next_event(events, "job.resumed")

        # A graceful stop: SIGTERM ends `sleep` at once, and the job is cancelled.
        assert baton.stop(job.id).state in ("stopping", "cancelled")
        stopped = baton.wait(job.id, timeout=30)
        assert stopped.state == "cancelled"

        # A retry runs it again as a new attempt.
        assert baton.retry(job.id).state in ("queued", "running")
        progress = next_event(events, "job.progress")
        assert progress.data["message"] == "attempt 2"
        assert baton.get(job.id).state == "running"

        # A forced stop kills it at once.
        assert baton.stop(job.id, force=True).state == "cancelled"
        assert baton.get(job.id).state == "cancelled"

        assert baton.retry(job.id, from_checkpoint=True).state in ("queued", "running")
        next_event(events, "job.progress")
        assert baton.cancel(job.id).state in ("stopping", "cancelled")
        cancelled = baton.wait(job.id, timeout=30)
        assert cancelled.state == "cancelled" and cancelled.attempt == 3

        assert baton.delete(job.id).state == "deleted"
        next_event(events, "job.deleted")
    assert baton.get(job.id).state == "deleted"


def test_a_server_on_a_local_socket(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    sock = tmp_path / "baton.sock"
    server = watch(request, Server(tmp_path, socket=sock))
    try:
        with Client(f"unix://{sock}") as baton:
            job = baton.submit("command", command=["echo '::result 1'"], shell=True)
            assert baton.wait(job.id, timeout=30).result == 1
            with baton.events(job=job.id) as events:
                assert next(events).type == "job.submitted"
    finally:
        server.kill()


def test_a_job_held_by_a_concurrency_limit_says_which(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    config = 'concurrency_limits = [{label = "source:alfabeta", max = 1}]\n[queues]\ndefault = 4\nother = 4\n'
    server = watch(request, Server(tmp_path, config))
    try:
        with Client(server.url) as baton:
            first = baton.submit("command", command=["sleep", "30"], labels={"source": "alfabeta"})
            wait_for("the first job running", lambda: baton.get(first.id).state == "running")
            second = baton.submit("command", command=["true"], queue="other", labels={"source": "alfabeta"})
            held = baton.get(second.id)
            assert held.state == "queued"
            assert held.waiting_for == "concurrency limit source:alfabeta (1/1)"
            assert baton.get(first.id).waiting_for is None
            baton.cancel(first.id)
            done = baton.wait(second.id, timeout=30)
            assert done.state == "completed" and done.waiting_for is None
    finally:
        server.kill()
