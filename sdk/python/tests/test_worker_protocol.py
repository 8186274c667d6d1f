"""The worker protocol spoken by hand from Python (a raw WebSocket): each misuse is
refused with the error code DESIGN.md section 11 names, and changes nothing."""

from __future__ import annotations

import json
from typing import Any, Dict

from websockets.sync.client import ClientConnection, connect

from baton_client import Client

from conftest import Server, unique, wait_for


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/api/workers/ws"


def recv(ws: ClientConnection) -> Dict[str, Any]:
    msg = json.loads(ws.recv(timeout=10))
    assert isinstance(msg, dict)
    return msg


def send(ws: ClientConnection, msg: Any) -> None:
    ws.send(msg if isinstance(msg, (str, bytes)) else json.dumps(msg))


def closed(ws: ClientConnection) -> bool:
    try:
        ws.recv(timeout=10)
    except Exception as e:
        return "ConnectionClosed" in type(e).__name__
    return False


def hello(ws: ClientConnection, kind: str) -> Dict[str, Any]:
    send(ws, {"op": "hello", "name": "raw", "kinds": [kind], "queues": ["default"], "slots": 1})
    welcome = recv(ws)
    assert welcome["type"] == "welcome", welcome
    return welcome


def test_a_worker_must_say_a_valid_hello_first(server: Server) -> None:
    with connect(ws_url(server)) as ws:
        send(ws, {"op": "ready", "slots": 2})
        e = recv(ws)
        assert e["type"] == "error" and e["code"] == "bad_message" and "hello" in e["message"], e
        assert closed(ws)

    for msg, says in [
        ({"op": "hello", "kinds": ["command"]}, "run by the server itself"),
        ({"op": "hello", "kinds": []}, "at least one kind"),
        ({"op": "hello", "kinds": ["x"], "slots": 0}, "slots"),
        ({"op": "hello", "kinds": ["x"], "queues": []}, "at least one queue"),
    ]:
        with connect(ws_url(server)) as ws:
            send(ws, msg)
            e = recv(ws)
            assert e["code"] == "invalid_hello" and says in e["message"], (msg, e)
            assert closed(ws)

    with Client(server.url) as baton:
        assert baton.workers() == []


def test_reports_with_a_wrong_job_or_token_or_shape_are_refused_and_change_nothing(server: Server) -> None:
    kind = unique("py-raw")
    with connect(ws_url(server)) as ws, Client(server.url) as baton:
        welcome = hello(ws, kind)
        assert welcome["heartbeat"] == "5s" and welcome["max_message"] == 1 << 20
        assert [w.id for w in baton.workers()] == [welcome["worker"]]
        job = baton.submit(kind, {"url": "https://a.example"})
        got = recv(ws)
        assert got["type"] == "job" and got["job"]["id"] == job.id and got["checkpoint"] is None
        token = got["token"]

        for msg, code in [
            ({"op": "dance"}, "bad_message"),
            ({"op": "progress", "job": job.id}, "bad_message"),
            ({"op": "progress", "job": "someone-else", "token": token}, "not_held"),
            ({"op": "progress", "job": job.id, "token": token + 100, "fraction": 0.5}, "stale_token"),
            ({"op": "complete", "job": job.id, "token": token - 1, "result": 1}, "stale_token"),
            ({"op": "hello", "kinds": [kind]}, "bad_message"),
            ('{"op": "heartbeat", "op": "ready"}', "bad_message"),
            ("not json", "bad_message"),
            ({"op": "ready", "slots": 1_000_000}, "bad_message"),
        ]:
            send(ws, msg)
            e = recv(ws)
            assert e["type"] == "error" and e["code"] == code, (msg, e)
        current = baton.get(job.id)
        assert current.state == "running" and current.progress is None

        # A heartbeat is taken silently; a checkpoint is acked once durable.
        send(ws, {"op": "heartbeat"})
        send(ws, {"op": "checkpoint", "job": job.id, "token": token, "data": {"page": 2}, "ref": "cp-1"})
        ack = recv(ws)
        assert ack == {"type": "ack", "ref": "cp-1", "job": job.id}

        # Over the message limit: refused, the connection closed, the job recovered.
        send(ws, {"op": "output", "job": job.id, "token": token, "text": "x" * (1 << 20)})
        e = recv(ws)
        assert e["code"] == "too_large", e
        assert closed(ws)
        wait_for("the recovery", lambda: baton.get(job.id).recoveries == 1)

    # The next worker gets the job with its checkpoint; a binary frame is refused.
    with connect(ws_url(server)) as ws, Client(server.url) as baton:
        hello(ws, kind)
        got = recv(ws)
        assert got["job"]["id"] == job.id and got["checkpoint"] == {"page": 2}, got
        send(ws, b"\x01\x02")
        assert recv(ws)["code"] == "bad_message"
        assert closed(ws)
        wait_for("the second recovery", lambda: baton.get(job.id).recoveries == 2)
        assert baton.cancel(job.id).state == "cancelled"
