"""Workflows (jobs with dependencies) and schedules."""

from __future__ import annotations

import pytest

from baton_client import Client, Conflict, NotFound, job_spec

from conftest import unique


def test_a_workflow_runs_its_jobs_in_dependency_order(baton: Client) -> None:
    # Each job appends its name to a file: the file says the order they ran in.
    log = f"/tmp/{unique('workflow')}.log"

    def step(name: str, *depends_on: str) -> dict[str, object]:
        return job_spec("command", command=[f"echo {name} >> {log}"], shell=True, depends_on=list(depends_on))

    id = unique("wf")
    submitted = baton.submit_workflow(
        {
            "fetch": step("fetch"),
            "parse": step("parse", "fetch"),
            "index": step("index", "fetch"),
            "report": step("report", "parse", "index"),
        },
        id=id,
    )
    assert submitted.id == id and sorted(submitted.jobs) == ["fetch", "index", "parse", "report"]
    report = baton.wait(submitted.jobs["report"], timeout=30)
    assert report.state == "completed" and report.workflow_id == id
    assert set(report.depends_on) == {submitted.jobs["parse"], submitted.jobs["index"]}

    graph = baton.get_workflow(id)
    assert graph.state == "completed" and graph.counts == {"completed": 4}
    assert {n.name: n.state for n in graph.nodes} == dict.fromkeys(submitted.jobs, "completed")
    names = {job_id: name for name, job_id in graph.jobs.items()}
    assert sorted((names[e.from_], names[e.to]) for e in graph.edges) == [
        ("fetch", "index"),
        ("fetch", "parse"),
        ("index", "report"),
        ("parse", "report"),
    ]
    with open(log) as f:
        order = f.read().split()
    assert order[0] == "fetch" and order[-1] == "report" and sorted(order[1:3]) == ["index", "parse"]

    # The same id again answers the same workflow.
    assert baton.submit_workflow({"x": step("x")}, id=id).jobs == submitted.jobs


def test_a_failed_dependency_cancels_its_dependents_and_runs_its_handler(baton: Client) -> None:
    submitted = baton.submit_workflow(
        {
            "load": job_spec("command", command=["exit 1"], shell=True, max_attempts=1),
            "use": job_spec("command", command=["true"], depends_on=["load"]),
            "alert": job_spec("command", command=["true"], depends_on=[{"job": "load", "on": "failed"}]),
        }
    )
    assert baton.wait(submitted.jobs["alert"], timeout=30).state == "completed"
    use = baton.wait(submitted.jobs["use"], timeout=30)
    assert use.state == "cancelled" and use.error is not None and use.error.code == "upstream_failed"
    assert baton.get_workflow(submitted.id).state == "failed"


def test_a_workflow_is_paused_resumed_and_cancelled(baton: Client) -> None:
    submitted = baton.submit_workflow(
        {
            "first": job_spec("command", command=["sleep", "300"]),
            "then": job_spec("command", command=["true"], depends_on=["first"]),
        }
    )
    id = submitted.id
    assert baton.pause_workflow(id).paused
    with pytest.raises(Conflict):
        baton.pause_workflow(id)
    assert not baton.resume_workflow(id).paused
    cancelled = baton.cancel_workflow(id)
    assert cancelled.id == id
    assert baton.wait(submitted.jobs["then"], timeout=30).state == "cancelled"
    assert baton.wait(submitted.jobs["first"], timeout=30).state == "cancelled"
    assert baton.get_workflow(id).state == "cancelled"


def test_a_schedule_is_created_triggered_replaced_paused_and_deleted(baton: Client) -> None:
    id = unique("nightly")
    job = job_spec("command", command=["echo '::result \"done\"'"], shell=True, labels={"from": id})
    schedule = baton.create_schedule(
        job, {"type": "cron", "expr": "0 2 * * *"}, id=id, timezone="Europe/London"
    )
    assert schedule.id == id and schedule.enabled and schedule.run_count == 0
    assert schedule.timezone == "Europe/London" and schedule.next_run is not None
    assert schedule.trigger == {"type": "cron", "expr": "0 2 * * *"}

    fired = baton.trigger_schedule(id)
    assert fired.job is not None and fired.job.schedule_id == id
    assert fired.fire.action == "created" and fired.schedule.run_count == 1
    assert baton.wait(fired.job.id, timeout=30).result == "done"

    history = list(baton.schedule_history(id))
    assert [(f.seq, f.job_id, f.outcome) for f in history] == [(1, fired.job.id, "completed")]
    assert [j.id for j in baton.list(schedule=id)] == [fired.job.id]

    paused = baton.pause_schedule(id)
    assert not paused.enabled and paused.next_run is None
    resumed = baton.resume_schedule(id)
    assert resumed.enabled and resumed.next_run is not None

    # Replacing keeps the history and the count.
    replaced = baton.put_schedule(id, job, {"type": "manual"})
    assert replaced.trigger == {"type": "manual"} and replaced.run_count == 1 and replaced.next_run is None
    assert baton.get_schedule(id).trigger == {"type": "manual"}
    assert [s.id for s in baton.list_schedules(q=id)] == [id]

    # History pages: newest first, across pages.
    for _ in range(2):
        baton.trigger_schedule(id)
    assert [f.seq for f in baton.schedule_history(id, page_size=2)] == [3, 2, 1]

    with pytest.raises(Conflict) as taken:
        baton.create_schedule(job, {"type": "manual"}, id=id)
    assert taken.value.code == "conflict"

    baton.delete_schedule(id)
    with pytest.raises(NotFound):
        baton.get_schedule(id)
