"""The event stream: a job's events in order, and a stream that outlives its server."""

from __future__ import annotations

import signal
import threading
from typing import List

import pytest

from baton_client import Client, Event, NotFound

from conftest import Server, unique


def test_a_jobs_stream_yields_its_events_in_order(baton: Client) -> None:
    job = baton.submit(
        "command",
        command=["for i in 1 2 3 4 5; do echo ::progress $i%; done; echo '::result {\"ok\": true}'"],
        shell=True,
    )
    seen: List[Event] = []
    with baton.events(job=job.id) as events:
        for event in events:
            seen.append(event)
            if event.type == "job.completed":
                break
    assert [e.type for e in seen] == ["job.submitted", "job.started"] + ["job.progress"] * 5 + [
        "job.completed"
    ]
    assert [e.data["progress"] for e in seen if e.type == "job.progress"] == [0.01, 0.02, 0.03, 0.04, 0.05]
    assert [e.seq for e in seen] == list(range(1, len(seen) + 1))
    assert all(e.job_id == job.id for e in seen)
    ids = [e.id for e in seen]
    assert ids == sorted(set(ids))
    # The same as the job's stored log.
    assert baton.job_events(job.id) == seen
    assert events.last_id == seen[-1].id


def test_a_stream_from_now_starts_when_it_is_made(baton: Client) -> None:
    events = baton.events()
    # Submitted after the stream was made, before its first read: not missed.
    job = baton.submit("command", command=["true"])
    try:
        first = next(e for e in events if e.job_id == job.id)
        assert first.type == "job.submitted"
    finally:
        events.close()


def test_a_stream_resumes_after_a_given_event(baton: Client) -> None:
    job = baton.submit("command", command=["true"])
    done = baton.wait(job.id, timeout=30)
    stored = baton.job_events(job.id)
    assert done.state == "completed" and len(stored) >= 3
    with baton.events(after=stored[0].id, job=job.id) as events:
        rest = [next(events) for _ in stored[1:]]
    assert rest == stored[1:]


def test_a_stream_of_an_unknown_job_is_refused(baton: Client) -> None:
    with pytest.raises(NotFound) as refused:
        next(baton.events(job="no-such-job"))
    assert refused.value.code == "not_found"


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_the_stream_survives_a_server_restart_without_gap_or_duplicate(own_server: Server, sig: int) -> None:
    baton = Client(own_server.url, timeout=10)
    # Long enough to be running across the restart; it starts again after a crash.
    job = baton.submit(
        "command",
        command=["for i in $(seq 1 30); do echo ::progress $i%; sleep 0.05; done"],
        shell=True,
    )

    # A job submitted after the restart: the stream ends once both have completed.
    later = unique("after-restart")
    seen: List[Event] = []
    progress = threading.Condition()
    failure: List[BaseException] = []
    stream = baton.events(after=0)

    def follow() -> None:
        waiting = {job.id, later}
        try:
            for event in stream:
                with progress:
                    seen.append(event)
                    progress.notify_all()
                if event.type == "job.completed":
                    waiting.discard(event.job_id or "")
                    if not waiting:
                        return
        except BaseException as e:  # reported by the test's thread
            failure.append(e)
            with progress:
                progress.notify_all()

    follower = threading.Thread(target=follow, daemon=True)
    follower.start()
    with progress:
        assert progress.wait_for(
            lambda: failure or sum(e.type == "job.progress" for e in seen) >= 3, timeout=30
        ), "no progress came before the restart"
    assert not failure, failure
    before = len(seen)

    own_server.kill(sig)
    own_server.start()
    # More events, written while the stream may still be reconnecting.
    baton.submit("command", command=["true"], id=later)

    follower.join(timeout=60)
    assert not follower.is_alive(), f"the stream did not reach the job's end; it saw {[e.type for e in seen]}"
    assert not failure, failure
    stream.close()

    ids = [e.id for e in seen]
    # Every event from the first, each once, in order: no gap and no duplicate.
    assert ids == list(range(1, ids[-1] + 1)), ids
    assert stream.reconnects >= 1
    assert len(seen) > before
    types = [e.type for e in seen]
    assert types.count("server.up") == 2
    mine = [e for e in seen if e.job_id == job.id]
    assert mine == baton.job_events(job.id)
    if sig == signal.SIGKILL:
        # Written at the start of the new server, before any client could connect.
        assert "job.crashed" in [e.type for e in mine] and "job.recovered" in [e.type for e in mine]
    assert baton.get(job.id).state == "completed"
    assert [e for e in seen if e.job_id == later] == baton.job_events(later)
