"""Worker processes (`python -m baton_client worker`) that die and that share work: a
worker killed with SIGKILL mid-job loses the job to another that carries on from the
last checkpoint, its late messages are refused, and many jobs across several workers
each run exactly once."""

from __future__ import annotations

import json
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Dict, List, Set

from websockets.sync.client import connect

from baton_client import Client, Event, job_spec

from conftest import Server, WorkerProcess, unique, wait_for


def ws_url(server: Server) -> str:
    return server.url.replace("http://", "ws://") + "/api/workers/ws"


def test_a_killed_worker_s_job_resumes_from_its_checkpoint_on_another_and_its_late_messages_are_refused(
    own_server: Server, tmp_path: Path, worker_processes: List[WorkerProcess]
) -> None:
    tokens = tmp_path / "tokens"
    first = WorkerProcess(own_server, tmp_path, "first", 1)
    worker_processes.append(first)
    with Client(own_server.url) as baton:
        job = baton.submit("py-crash", {"pages": 40, "delay": 0.05, "tokens": str(tokens)}, max_recoveries=3)
        # Killed once it has saved a few pages.
        with baton.events(job=job.id) as events:
            for event in events:
                if event.type == "job.checkpoint" and event.data["checkpoint"]["page"] >= 5:
                    break
        first.kill()
        wait_for("the crash's recovery", lambda: "job.recovered" in [e.type for e in baton.job_events(job.id)])
        assert baton.get(job.id).state == "queued"

        second = WorkerProcess(own_server, tmp_path, "second", 1)
        worker_processes.append(second)
        done = baton.wait(job.id, timeout=60)
        assert done.state == "completed", done.error
        history = baton.job_events(job.id)
        kinds = [e.type for e in history]
        crash = kinds.index("job.crashed")
        assert kinds[: crash + 3] == kinds[:crash] + ["job.crashed", "job.recovered", "job.started"]
        assert kinds.count("job.started") == 2 and kinds[-1] == "job.completed"
        # It carried on from the last checkpoint that was durable before the kill.
        saved = [e.data["checkpoint"]["page"] for e in history[:crash] if e.type == "job.checkpoint"]
        assert done.result["resumed_from"] == saved[-1] >= 5, (saved, done.result)
        assert done.result["pid"] == second.proc.pid
        assert "disconnected" in json.dumps(history[crash].data)

        # The dead worker's attempt, reported on late by a process that comes back:
        # refused, and the job is unchanged.
        old_token, new_token = (int(t) for t in tokens.read_text().split())
        assert new_token > old_token
        with connect(ws_url(own_server)) as ws:
            ws.send(json.dumps({"op": "hello", "name": "late", "kinds": ["py-crash"], "slots": 1}))
            assert json.loads(ws.recv(timeout=10))["type"] == "welcome"
            for token in (old_token, new_token):
                ws.send(json.dumps({"op": "complete", "job": job.id, "token": token, "result": "late"}))
                error = json.loads(ws.recv(timeout=10))
                assert error["type"] == "error" and error["code"] == "not_held", error
                assert error["job"] == job.id
        assert baton.get(job.id).result == done.result


def test_a_thousand_jobs_across_three_worker_processes_each_complete_exactly_once(
    own_server: Server, tmp_path: Path, worker_processes: List[WorkerProcess]
) -> None:
    ran = tmp_path / "ran"
    workers = [WorkerProcess(own_server, tmp_path, f"many-{i}", 8) for i in range(3)]
    worker_processes.extend(workers)
    label = unique("many")
    started = time.monotonic()
    with Client(own_server.url, timeout=30) as baton:
        with baton.events() as events:
            ids: Set[str] = set()
            for batch in range(4):
                specs = [
                    job_spec("py-many", {"file": str(ran), "n": batch * 250 + i}, labels={"batch": label})
                    for i in range(250)
                ]
                ids.update(j.id for j in baton.submit_many(specs))
            assert len(ids) == 1000
            seen: Dict[str, List[Event]] = defaultdict(list)
            completed: Set[str] = set()
            for event in events:
                if event.job_id in ids:
                    seen[event.job_id].append(event)
                    if event.type == "job.completed":
                        completed.add(event.job_id)
                        if len(completed) == len(ids):
                            break
        elapsed = time.monotonic() - started
        jobs = list(baton.list(label=f"batch:{label}"))
    assert len(jobs) == 1000 and {j.state for j in jobs} == {"completed"}
    for job_id, its in seen.items():
        kinds = [e.type for e in its]
        assert kinds.count("job.started") == 1 and kinds.count("job.completed") == 1, (job_id, kinds)
        assert "job.crashed" not in kinds and "job.failed" not in kinds
        assert kinds.index("job.started") < kinds.index("job.completed")
    # Each handler ran once: one line per job, and the result names the process.
    lines = ran.read_text().split("\n")[:-1]
    runs = Counter(line.split()[0] for line in lines)
    assert set(runs) == ids and set(runs.values()) == {1}
    pids = {w.proc.pid for w in workers}
    by_pid: Dict[Any, int] = Counter(j.result["pid"] for j in jobs)
    assert set(by_pid) == pids, by_pid
    print(f"1000 jobs over 3 workers in {elapsed:.1f} s: {dict(by_pid)}")
