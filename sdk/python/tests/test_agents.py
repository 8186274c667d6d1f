"""The agent-crew adapter (baton_client.agents) against a real server, with crew-like
objects: a CrewAI-shaped crew (kickoff(), step_callback, task_callback, agents on
threads of their own) and plain callables. These tests do not use CrewAI itself;
tests/test_crewai.py runs a real CrewAI crew (in target/crewai-venv)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import pytest

from baton_client import Client, Context, Event, Stopped, SyncContext, Worker
from baton_client.agents import arun_crew, crew_handler, default_step_name, run_crew

from conftest import Server, history, of, serving, unique, wait_for


@dataclass
class Action:
    """Like CrewAI's AgentAction: an agent's tool call."""

    tool: str
    text: str


@dataclass
class TaskOutput:
    """Like CrewAI's TaskOutput."""

    name: str
    agent: str
    raw: str
    description: str = ""


@dataclass
class CrewOutput:
    raw: str
    tasks_output: List[TaskOutput]


@dataclass
class Agent:
    role: str


@dataclass
class Task:
    name: str
    agent: Agent
    tools: List[str]
    delay: float = 0.0


@dataclass
class FakeCrew:
    """Crew-like: kickoff() runs each task's agent on a thread of its own, which
    reports each tool call to step_callback and the task's output to task_callback."""

    tasks: List[Task]
    fail_in: Optional[str] = None
    step_callback: Optional[Callable[[Any], Any]] = None
    task_callback: Optional[Callable[[Any], Any]] = None
    steps_run: List[str] = field(default_factory=list)
    raised: List[BaseException] = field(default_factory=list)

    def kickoff(self, inputs: Optional[Dict[str, Any]] = None) -> CrewOutput:
        topic = (inputs or {}).get("topic", "nothing")
        outputs = []
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="agent") as agents:
            for task in self.tasks:
                try:
                    outputs.append(agents.submit(self.work, task, topic).result())
                except BaseException as e:
                    self.raised.append(e)
                    raise
        return CrewOutput(raw=outputs[-1].raw, tasks_output=outputs)

    def work(self, task: Task, topic: str) -> TaskOutput:
        assert threading.current_thread() is not threading.main_thread()
        for tool in task.tools:
            time.sleep(task.delay)
            self.steps_run.append(f"{task.agent.role}: {tool}")
            assert self.step_callback is not None
            action = Action(tool, f"Thought: {tool} it\nAction: {tool}\nObservation: {tool}ed {topic}")
            action.agent = task.agent.role  # type: ignore[attr-defined]
            self.step_callback(action)
        if task.name == self.fail_in:
            write_the_draft(topic)
        output = TaskOutput(
            task.name, task.agent.role, f"{task.name} of {topic}", f"the {task.name} of {topic}"
        )
        assert self.task_callback is not None
        self.task_callback(output)
        return output


def write_the_draft(topic: str) -> None:
    raise ValueError(f"the model answered nothing about {topic}")


def two_tasks(fail_in: Optional[str] = None) -> FakeCrew:
    researcher, writer = Agent("Researcher"), Agent("Writer")
    return FakeCrew(
        [Task("research", researcher, ["search", "read"]), Task("write", writer, ["draft"])], fail_in=fail_in
    )


def progress(events: List[Event]) -> List[Tuple[Optional[float], Optional[str]]]:
    """Each progress report: its fraction (to 3 places) and message."""
    reports = []
    for e in of(events, "job.progress"):
        fraction = e.data.get("progress")
        reports.append((None if fraction is None else round(fraction, 3), e.data.get("message")))
    return reports


def test_a_crews_steps_tasks_and_output_become_the_jobs_steps_checkpoints_progress_and_result(
    server: Server, baton: Client
) -> None:
    kind = unique("py-crew")
    worker = Worker(server.url)
    crews: List[FakeCrew] = []

    @worker.handler(kind)
    @crew_handler
    def research(ctx: SyncContext, payload: Any) -> FakeCrew:
        crews.append(two_tasks())
        return crews[-1]

    with serving(worker):
        job = baton.submit(kind, {"topic": "baton"})
        events = history(baton, job.id)

    # What happened, in order: each step (with its text in the log just before it),
    # then per finished task a checkpoint and the progress.
    assert [e.type for e in events] == [
        "job.submitted",
        "job.started",
        "job.log",
        "job.step",
        "job.log",
        "job.step",
        "job.checkpoint",
        "job.progress",
        "job.log",
        "job.step",
        "job.checkpoint",
        "job.progress",
        "job.completed",
    ]
    assert [e.data["step"] for e in of(events, "job.step")] == [
        "Researcher: search",
        "Researcher: read",
        "Writer: draft",
    ]
    assert of(events, "job.log")[0].data["line"] == (
        "Researcher: search: Thought: search it\nAction: search\nObservation: searched baton"
    )
    researched = {
        "index": 0,
        "name": "research",
        "description": "the research of baton",
        "agent": "Researcher",
        "raw": "research of baton",
        "json": None,
        "pydantic": None,
    }
    write = {
        **researched,
        "index": 1,
        "name": "write",
        "description": "the write of baton",
        "agent": "Writer",
    }
    write["raw"] = "write of baton"
    checkpoints = [e.data["checkpoint"] for e in of(events, "job.checkpoint")]
    assert checkpoints == [{"tasks": [researched]}, {"tasks": [researched, write]}]
    assert progress(events) == [(0.5, "1/2 tasks done: research"), (1.0, "2/2 tasks done: write")]

    done = baton.get(job.id)
    assert done.state == "completed" and done.progress == 1.0
    assert done.result == {"raw": "write of baton", "tasks": [researched, write]}
    # The crew's own callbacks are put back after the run.
    assert crews[0].step_callback is None and crews[0].task_callback is None


def test_a_callable_with_step_and_task_callbacks_runs_in_an_async_handler(
    server: Server, baton: Client
) -> None:
    kind = unique("py-crew-async")
    worker = Worker(server.url)
    threads: List[str] = []

    def crew(
        step_callback: Callable[[Any], Any], task_callback: Callable[[Any], Any], inputs: Dict[str, Any]
    ) -> Any:
        threads.append(threading.current_thread().name)
        for n in range(inputs["tasks"]):
            step_callback(f"plan part {n + 1}")
            step_callback(f"write part {n + 1}")
            task_callback(f"part {n + 1}")
        return {"parts": inputs["tasks"]}

    @worker.handler(kind)
    async def handle(ctx: Context, payload: Any) -> Any:
        ticks = 0

        async def tick() -> None:
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.001)

        ticker = asyncio.ensure_future(tick())
        try:
            result = await arun_crew(ctx, crew, payload, total=payload["tasks"], log_steps=False)
        finally:
            ticker.cancel()
        assert ticks > 0, "the loop was blocked while the crew ran"
        return result

    with serving(worker):
        job = baton.submit(kind, {"tasks": 3})
        events = history(baton, job.id)

    assert threads and threads[0].startswith("baton-crew-"), threads
    assert [e.data["step"] for e in of(events, "job.step")] == [
        f"{verb} part {n}" for n in (1, 2, 3) for verb in ("plan", "write")
    ]
    assert of(events, "job.log") == []
    assert progress(events) == [
        (0.333, "1/3 tasks done: task 1"),
        (0.667, "2/3 tasks done: task 2"),
        (1.0, "3/3 tasks done: task 3"),
    ]
    done = baton.get(job.id)
    assert done.state == "completed"
    assert done.result["raw"] == {"parts": 3}
    assert [t["raw"] for t in done.result["tasks"]] == ["part 1", "part 2", "part 3"]


def test_a_failing_task_fails_the_job_with_its_traceback(server: Server, baton: Client) -> None:
    kind = unique("py-crew-fail")
    worker = Worker(server.url)
    crews: List[FakeCrew] = []

    @worker.handler(kind)
    def handle(ctx: SyncContext, payload: Any) -> Any:
        crews.append(two_tasks(fail_in="write"))
        return run_crew(ctx, crews[-1], payload)

    with serving(worker):
        job = baton.submit(kind, {"topic": "baton"}, max_attempts=1)
        done = baton.wait(job.id, timeout=30)

    assert done.state == "failed" and done.error is not None
    assert done.error.message.startswith("ValueError: the model answered nothing about baton"), (
        done.error.message
    )
    assert "Traceback (most recent call last)" in done.error.message
    assert "in write_the_draft" in done.error.message and "in kickoff" in done.error.message
    # The finished task is in the job's last checkpoint, for a retry from it.
    events = baton.job_events(job.id)
    assert [e.data["checkpoint"]["tasks"][-1]["name"] for e in of(events, "job.checkpoint")] == ["research"]
    assert [e.data["step"] for e in of(events, "job.step")] == [
        "Researcher: search",
        "Researcher: read",
        "Writer: draft",
    ]
    # The crew's callbacks are put back after a failure too.
    assert crews[0].step_callback is None and crews[0].task_callback is None


def test_pause_holds_the_crew_between_steps_resume_continues_and_stop_ends_it(
    server: Server, baton: Client
) -> None:
    kind = unique("py-crew-pause")
    worker = Worker(server.url)
    crews: List[FakeCrew] = []

    @worker.handler(kind)
    @crew_handler
    def handle(ctx: SyncContext, payload: Any) -> FakeCrew:
        agent = Agent("Looper")
        crews.append(FakeCrew([Task("loop", agent, [f"tool{n}" for n in range(500)], delay=0.01)]))
        return crews[-1]

    with serving(worker):
        job = baton.submit(kind, {"topic": "pauses"})
        wait_for("the crew's first steps", lambda: bool(crews) and len(crews[0].steps_run) >= 3)
        crew = crews[0]
        assert baton.pause(job.id).state == "paused"
        wait_for("the crew to hold", lambda: stable(crew.steps_run, 0.3))
        held = len(crew.steps_run)
        time.sleep(0.3)
        assert len(crew.steps_run) == held, "a paused crew took more steps"
        assert baton.get(job.id).step == crew.steps_run[-1]

        assert baton.resume(job.id).state == "running"
        wait_for("steps after the resume", lambda: len(crew.steps_run) >= held + 3)

        baton.stop(job.id)
        done = baton.wait(job.id, timeout=30)
        assert done.state == "cancelled"
        ended = len(crew.steps_run)
        time.sleep(0.3)
        assert len(crew.steps_run) == ended, "a stopped crew went on"
        assert ended < 500
    # The stop reached the crew as Stopped, raised from its step callback.
    assert len(crew.raised) == 1 and isinstance(crew.raised[0], Stopped)
    kinds = [e.type for e in baton.job_events(job.id)]
    assert kinds.index("job.paused") < kinds.index("job.resumed") < kinds.index("job.cancelled")


def stable(values: List[str], seconds: float) -> bool:
    before = len(values)
    time.sleep(seconds)
    return len(values) == before


def test_a_retry_from_the_checkpoint_gives_a_crew_that_takes_finished_the_tasks_done_already(
    server: Server, baton: Client
) -> None:
    kind = unique("py-crew-resume")
    worker = Worker(server.url)
    ran: List[Tuple[str, int]] = []

    def crew(
        step_callback: Callable[[Any], Any],
        task_callback: Callable[[Any], Any],
        inputs: Dict[str, Any],
        finished: List[Dict[str, Any]],
    ) -> str:
        done = {t["name"] for t in finished}
        for name in ("research", "write", "edit"):
            if name in done:
                continue
            ran.append((name, len(finished)))
            step_callback(f"{name} step")
            if name == "write" and inputs.get("fail"):
                raise RuntimeError("the model timed out")
            task_callback(TaskOutput(name, "Agent", f"{name} done"))
        return "edited"

    @worker.handler(kind)
    def handle(ctx: SyncContext, payload: Any) -> Any:
        return run_crew(ctx, crew, {"fail": ctx.attempt == 1}, total=3)

    with serving(worker):
        job = baton.submit(kind, max_attempts=1)
        assert baton.wait(job.id, timeout=30).state == "failed"
        assert ran == [("research", 0), ("write", 0)]
        baton.retry(job.id, from_checkpoint=True)
        done = baton.wait(job.id, timeout=30)

    assert done.state == "completed", done.error
    # The second attempt ran only the tasks the first did not finish.
    assert ran[2:] == [("write", 1), ("edit", 1)]
    assert done.result == {
        "raw": "edited",
        "tasks": [
            {
                "index": i,
                "name": name,
                "description": None,
                "agent": "Agent",
                "raw": f"{name} done",
                "json": None,
                "pydantic": None,
            }
            for i, name in enumerate(("research", "write", "edit"))
        ],
    }
    events = baton.job_events(job.id)
    second = events[[e.type for e in events].index("job.started", 3) :]
    assert [e.data["step"] for e in of(second, "job.step")] == ["write step", "edit step"]
    assert progress(second)[0] == (0.333, "1/3 tasks finished by an earlier attempt")
    assert progress(second)[-1] == (1.0, "3/3 tasks done: edit")


def test_a_crew_that_takes_no_finished_runs_again_from_its_first_task_and_says_so(
    server: Server, baton: Client
) -> None:
    kind = unique("py-crew-over")
    worker = Worker(server.url)
    ran: List[int] = []

    def crew(step_callback: Callable[[Any], Any], task_callback: Callable[[Any], Any]) -> str:
        ran.append(len(ran) + 1)
        step_callback("research step")
        task_callback(TaskOutput("research", "Agent", f"research of run {len(ran)}"))
        if len(ran) == 1:
            raise RuntimeError("the model timed out")
        task_callback(TaskOutput("write", "Agent", "written"))
        return "written"

    @worker.handler(kind)
    def handle(ctx: SyncContext, payload: Any) -> Any:
        return run_crew(ctx, crew)

    with serving(worker):
        job = baton.submit(kind, max_attempts=1)
        assert baton.wait(job.id, timeout=30).state == "failed"
        baton.retry(job.id, from_checkpoint=True)
        done = baton.wait(job.id, timeout=30)

    assert done.state == "completed", done.error
    assert ran == [1, 2]
    assert [t["raw"] for t in done.result["tasks"]] == ["research of run 2", "written"]
    logs = [e.data["line"] for e in of(baton.job_events(job.id), "job.log")]
    said = (
        "an earlier attempt finished 1 task (research); "
        "this crew takes no finished= and runs from its first task"
    )
    assert said in logs, logs


def test_a_crew_whose_finished_tasks_do_not_fit_in_a_checkpoint_fails_at_once(
    server: Server, baton: Client
) -> None:
    kind = unique("py-crew-large")
    worker = Worker(server.url)
    calls: List[str] = []

    def crew(step_callback: Callable[[Any], Any], task_callback: Callable[[Any], Any]) -> str:
        calls.append("kickoff")
        task_callback(TaskOutput("summary", "Writer", "x" * (1 << 20)))
        return "never"

    @worker.handler(kind)
    def handle(ctx: SyncContext, payload: Any) -> Any:
        return run_crew(ctx, crew)

    with serving(worker):
        job = baton.submit(kind, max_attempts=3)
        done = baton.wait(job.id, timeout=30)
    assert done.state == "failed" and done.attempt == 1 and calls == ["kickoff"]
    assert done.error is not None
    assert done.error.message.startswith(
        "the checkpoint after task summary is too large (the checkpoint message is"
    ), done.error.message
    assert "the outputs of a crew's finished tasks must fit in one message" in done.error.message


def test_run_crew_refuses_what_is_not_a_crew(server: Server, baton: Client) -> None:
    kind = unique("py-crew-not")
    worker = Worker(server.url)

    @worker.handler(kind)
    def handle(ctx: SyncContext, payload: Any) -> Any:
        return run_crew(ctx, 42)

    @worker.handler(kind + "-async")
    async def in_async(ctx: Context, payload: Any) -> Any:
        return run_crew(ctx, two_tasks())  # type: ignore[arg-type]

    @worker.handler(kind + "-sync")
    def in_sync(ctx: SyncContext, payload: Any) -> Any:
        return asyncio.run(arun_crew(ctx, two_tasks()))  # type: ignore[arg-type]

    with serving(worker):
        jobs = [baton.submit(k, max_attempts=1) for k in (kind, kind + "-async", kind + "-sync")]
        done = [baton.wait(job.id, timeout=30) for job in jobs]
    messages = [d.error.message if d.error else "" for d in done]
    assert [d.state for d in done] == ["failed"] * 3
    assert messages[0].startswith(
        "TypeError: run_crew takes a CrewAI Crew, an object with kickoff(), step_callback and task_callback, "
        "or a callable that takes step_callback= and task_callback=; not int"
    ), messages[0]
    assert messages[1].startswith(
        "TypeError: run_crew takes a sync handler's SyncContext: an async handler awaits arun_crew(ctx, ...)"
    ), messages[1]
    assert messages[2].startswith(
        "TypeError: arun_crew takes an async handler's Context: a sync handler calls run_crew(ctx, ...)"
    ), messages[2]


@dataclass
class Finish:
    """Like CrewAI's AgentFinish."""

    output: str


@dataclass
class ToolResult:
    """Like CrewAI's ToolResult, reported just before the action that used the tool."""

    result: str
    result_as_answer: bool = False


@pytest.mark.parametrize(
    "role, step, name",
    [
        ("Researcher", Action("search", ""), "Researcher: search"),
        (None, "plan the  outline\n", "plan the outline"),
        ("Writer", Finish("done"), "Writer: final answer"),
        ("Writer", ToolResult("found"), None),
        ("Writer", TaskOutput("outline", "y", "z"), "Writer: outline"),
        ("Writer", object(), "Writer: object"),
        ("A" * 300, "b", "A" * 200),
    ],
)
def test_default_step_names(role: Optional[str], step: Any, name: Optional[str]) -> None:
    assert default_step_name(role, step) == name
