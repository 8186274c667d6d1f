"""Errors as a caller sees them, and a server with auth on."""

from __future__ import annotations

import time

import pytest

from baton_client import (
    BatonConnectionError,
    BatonError,
    BatonTimeout,
    Client,
    Conflict,
    Forbidden,
    Invalid,
    NotFound,
    Unauthorized,
    job_spec,
)

from conftest import ADMIN_TOKEN, VIEWER_TOKEN, Server, free_port, unique


def test_an_unknown_job_is_not_found(baton: Client) -> None:
    with pytest.raises(NotFound) as e:
        baton.get("no-such-job")
    assert e.value.status == 404 and e.value.code == "not_found"
    assert "no-such-job" in e.value.message
    assert isinstance(e.value, BatonError)
    with pytest.raises(NotFound):
        baton.cancel("no-such-job")


def test_an_invalid_spec_is_refused_naming_the_problem(baton: Client) -> None:
    with pytest.raises(Invalid) as e:
        baton.submit("command", command=["true"], delay="soon")
    assert e.value.status == 422 and e.value.code == "invalid_spec"
    assert "delay" in e.value.message and '"soon"' in e.value.message

    with pytest.raises(Invalid) as e:
        baton.submit("no-such-handler", {"x": 1})
    assert "no-such-handler" in e.value.message

    # In a batch the refusal names the job and its field; nothing is stored.
    label = unique("refused")
    good = job_spec("command", command=["true"], labels={"batch": label})
    bad = job_spec("command", command=["true"], timeout="forever")
    with pytest.raises(Invalid) as e:
        baton.submit_many([good, bad])
    assert e.value.index == 1 and e.value.field == "timeout"
    assert list(baton.list(label=f"batch:{label}")) == []


def test_an_illegal_transition_is_a_conflict(baton: Client) -> None:
    job = baton.submit("command", command=["true"])
    assert baton.wait(job.id, timeout=30).state == "completed"
    with pytest.raises(Conflict) as e:
        baton.pause(job.id)
    assert e.value.status == 409 and e.value.code == "illegal_transition"


def test_wait_gives_up_after_its_timeout(baton: Client) -> None:
    job = baton.submit("command", command=["true"], delay="1h")
    with pytest.raises(BatonTimeout) as e:
        baton.wait(job.id, timeout=0.5)
    assert job.id in str(e.value) and "scheduled" in str(e.value)
    baton.cancel(job.id)

    # A job whose events never stop coming: the wait still ends on time.
    chatty = baton.submit(
        "command", command=["while true; do echo ::progress 0.5; sleep 0.02; done"], shell=True
    )
    started = time.monotonic()
    with pytest.raises(BatonTimeout) as e:
        baton.wait(chatty.id, timeout=1)
    assert time.monotonic() - started < 5
    assert "running" in str(e.value)
    baton.stop(chatty.id, force=True)


def test_a_server_that_is_not_there_is_a_connection_error_naming_its_url() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with Client(url) as baton:
        with pytest.raises(BatonConnectionError) as e:
            baton.get("some-job")
        assert url in str(e.value) and e.value.url.startswith(url)
        assert isinstance(e.value, ConnectionError)
        with pytest.raises(BatonConnectionError):
            next(iter(baton.list()))
        with pytest.raises(BatonConnectionError):
            baton.events(after=0).__next__()


def test_a_server_with_auth_needs_a_token_with_the_right_role(auth_server: Server) -> None:
    with Client(auth_server.url) as anonymous:
        with pytest.raises(Unauthorized) as e:
            anonymous.submit("command", command=["true"])
        assert e.value.status == 401
        with pytest.raises(Unauthorized):
            anonymous.get("any-job")
    with Client(auth_server.url, token="not-a-token") as wrong:
        with pytest.raises(Unauthorized):
            list(wrong.list())

    with Client(auth_server.url, token=VIEWER_TOKEN) as viewer:
        with pytest.raises(Forbidden) as refused:
            viewer.submit("command", command=["true"])
        assert refused.value.status == 403

    with Client(auth_server.url, token=ADMIN_TOKEN) as admin:
        job = admin.submit("command", command=["echo '::result 42'"], shell=True)
        assert admin.wait(job.id, timeout=30).result == 42
        with admin.events(job=job.id) as events:
            assert next(events).type == "job.submitted"
        assert [j.id for j in admin.list()] == [job.id]

    with Client(auth_server.url, token=VIEWER_TOKEN) as viewer:
        assert viewer.get(job.id).state == "completed"
        with pytest.raises(Forbidden):
            viewer.delete(job.id)
