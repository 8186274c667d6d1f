"""The agent-crew adapter (baton_client.agents) with the real crewai package: CrewAI
crews of three agents on a scripted model (a subclass of CrewAI's BaseLLM that answers
from a script: no key, no network) run as jobs of a real server.

CrewAI is large (about 1 GB installed), so these tests run in a virtualenv of their
own, target/crewai-venv, that scripts/test-python makes on first use and reuses; the
rest of the suite runs without CrewAI (and tests/test_agents.py tests the adapter with
crew-like objects there)."""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest

# Before CrewAI is imported: no telemetry (nothing may leave the machine), and its
# files (it keeps the outputs of the last kickoff) in a folder of this run's.
os.environ["CREWAI_DISABLE_TELEMETRY"] = "true"
os.environ["OTEL_SDK_DISABLED"] = "true"
os.environ["CREWAI_TRACING_ENABLED"] = "false"
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="baton-crewai-data-")
atexit.register(shutil.rmtree, os.environ["XDG_DATA_HOME"], True)

try:
    from crewai import Agent, Crew, Task
    from crewai.llms.base_llm import BaseLLM
    from crewai.tools import tool
except ImportError as e:
    raise ImportError(
        f"tests/test_crewai.py needs the crewai package, which {sys.executable} does not have: "
        "`bash scripts/test-python` runs it in target/crewai-venv, which it makes on first use "
        "(python3 -m venv target/crewai-venv && target/crewai-venv/bin/pip install crewai==1.15.30 pytest "
        "./sdk/python, by hand)"
    ) from e

from baton_client import Client, Event, SyncContext, Worker
from baton_client.agents import crew_handler, run_crew

from conftest import REPO, Server, history, of, serving, unique, wait_for

# CrewAI's own code warns about its deprecated fields as it reads them.
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@dataclass
class Script:
    """What the scripted model does, and what it was asked."""

    fail_in: Optional[str] = None
    # Set: the search tool answers; cleared: it waits (a test's way to catch a crew
    # between two steps).
    gate: threading.Event = field(default_factory=threading.Event)
    calls: List[str] = field(default_factory=list)
    prompts: Dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.gate.set()


SCRIPTS: Dict[str, Script] = {}


class Scripted(BaseLLM):
    """Each agent calls its first tool once, then answers from what the tool said;
    the model's name says which Script it follows."""

    def call(
        self,
        messages: Any,
        tools: Any = None,
        callbacks: Any = None,
        available_functions: Any = None,
        from_task: Any = None,
        from_agent: Any = None,
        response_model: Any = None,
    ) -> str:
        script = SCRIPTS[self.model]
        task = str(getattr(from_task, "name", None) or "task")
        history: List[Dict[str, Any]] = [] if isinstance(messages, str) else list(messages)
        script.calls.append(task)
        script.prompts.setdefault(task, "\n".join(str(m.get("content", "")) for m in history))
        if task == script.fail_in:
            raise RuntimeError(f"the scripted model is down for {task}")
        said = [m for m in history if m.get("role") == "assistant"]
        agent_tools = getattr(from_agent, "tools", None) or []
        if agent_tools and not said:
            name = agent_tools[0].name
            return f'Thought: I should use {name}\nAction: {name}\nAction Input: {{"query": "{task}"}}'
        observed = str(said[-1].get("content", "")).rpartition("Observation:")[2].strip() if said else ""
        return f"Thought: I know enough\nFinal Answer: {from_task.description} Done, from {observed}."

    def supports_function_calling(self) -> bool:
        return False


def make_crew(script: Script) -> Any:
    name = unique("scripted")
    SCRIPTS[name] = script
    llm = Scripted(model=name)

    @tool("search")
    def search(query: str) -> str:
        """Searches the team's notes."""
        script.gate.wait(60)
        return f"notes on {query}"

    @tool("outline")
    def outline(query: str) -> str:
        """Outlines an article."""
        return f"outline of {query}"

    researcher = Agent(
        role="Researcher", goal="Find facts about {topic}", backstory="Careful.", tools=[search], llm=llm
    )
    writer = Agent(role="Writer", goal="Write about {topic}", backstory="Plain.", tools=[outline], llm=llm)
    editor = Agent(
        role="Editor", goal="Check the article on {topic}", backstory="Short.", tools=[search], llm=llm
    )
    return Crew(
        agents=[researcher, writer, editor],
        tasks=[
            Task(name="research", description="Research {topic}.", expected_output="facts", agent=researcher),
            Task(
                name="draft",
                description="Draft an article on {topic}.",
                expected_output="a draft",
                agent=writer,
            ),
            Task(
                name="edit",
                description="Edit the article on {topic}.",
                expected_output="an article",
                agent=editor,
            ),
        ],
    )


def test_a_crewai_crews_steps_tasks_and_output_become_the_jobs_steps_checkpoints_progress_and_result(
    server: Server, baton: Client
) -> None:
    kind = unique("crewai")
    worker = Worker(server.url)
    script = Script()
    crews: List[Any] = []

    @worker.handler(kind)
    @crew_handler
    def research(ctx: SyncContext, payload: Any) -> Any:
        crews.append(make_crew(script))
        return crews[-1]

    with serving(worker):
        job = baton.submit(kind, {"topic": "baton"})
        events = history(baton, job.id)

    # The same crew kicked off outside Baton: the job's result is its output.
    plain = make_crew(Script()).kickoff(inputs={"topic": "baton"})

    assert [e.data["step"] for e in of(events, "job.step")] == [
        "Researcher: search",
        "Writer: outline",
        "Editor: search",
    ]
    checkpoints = [e.data["checkpoint"]["tasks"] for e in of(events, "job.checkpoint")]
    assert [[t["name"] for t in c] for c in checkpoints] == [
        ["research"],
        ["research", "draft"],
        ["research", "draft", "edit"],
    ]
    assert [(round(e.data["progress"], 3), e.data["message"]) for e in of(events, "job.progress")] == [
        (0.333, "1/3 tasks done: research"),
        (0.667, "2/3 tasks done: draft"),
        (1.0, "3/3 tasks done: edit"),
    ]
    # Each step comes after its agent's tool call and before the model's next call;
    # each checkpoint after its task's last call.
    kinds = [e.type for e in events]
    assert kinds.index("job.step") < kinds.index("job.checkpoint")

    done = baton.get(job.id)
    assert done.state == "completed" and done.progress == 1.0
    assert done.result["raw"] == plain.raw == "Edit the article on baton. Done, from notes on edit."
    assert [t["raw"] for t in done.result["tasks"]] == [t.raw for t in plain.tasks_output]
    assert [(t["index"], t["agent"]) for t in done.result["tasks"]] == [
        (0, "Researcher"),
        (1, "Writer"),
        (2, "Editor"),
    ]
    assert done.result["tasks"][1]["description"] == "Draft an article on baton."
    assert set(done.result["token_usage"]) >= {"total_tokens", "successful_requests"}
    assert script.calls == ["research", "research", "draft", "draft", "edit", "edit"]
    # Each task saw the outputs of the tasks before it, as CrewAI gives them.
    assert "Research baton. Done, from notes on research." in script.prompts["draft"]
    # The callbacks set for the run are gone from the crew after it.
    crew = crews[0]
    assert crew.step_callback is None and crew.task_callback is None
    assert [a.step_callback for a in crew.agents] == [None] * 3 and [t.callback for t in crew.tasks] == [
        None
    ] * 3


def test_pause_holds_a_crewai_crew_between_steps_and_stop_ends_it_with_no_more_model_calls(
    server: Server, baton: Client
) -> None:
    kind = unique("crewai-pause")
    worker = Worker(server.url)
    scripts: List[Script] = []
    contexts: List[SyncContext] = []

    @worker.handler(kind)
    @crew_handler
    def research(ctx: SyncContext, payload: Any) -> Any:
        contexts.append(ctx)
        return make_crew(scripts[len(scripts) - 1])

    def held_after_the_first_step() -> str:
        """A job whose crew is caught at its first step (the researcher's search) while
        the job is paused."""
        script = Script()
        script.gate.clear()
        scripts.append(script)
        job = baton.submit(kind, {"topic": "pauses"})
        wait_for("the researcher's search", lambda: script.calls == ["research"])
        assert baton.pause(job.id).state == "paused"
        wait_for("the pause to reach the worker", lambda: contexts[-1].paused)
        script.gate.set()  # the search answers; the step after it is a pause point
        wait_for("the step", lambda: baton.get(job.id).step == "Researcher: search")
        time.sleep(0.5)
        assert script.calls == ["research"], "a paused crew called its model again"
        assert baton.get(job.id).state == "paused"
        return job.id

    with serving(worker):
        paused = held_after_the_first_step()
        assert baton.resume(paused).state == "running"
        done = baton.wait(paused, timeout=60)
        assert done.state == "completed", done.error
        assert scripts[0].calls == ["research", "research", "draft", "draft", "edit", "edit"]

        stopped = held_after_the_first_step()
        baton.stop(stopped)
        done = baton.wait(stopped, timeout=60)
        assert done.state == "cancelled", done.error
        time.sleep(0.5)
    # CrewAI retries a task whose agent raised, calling its model again: not for a stop.
    assert scripts[1].calls == ["research"], scripts[1].calls
    assert [e.type for e in baton.job_events(stopped)].count("job.checkpoint") == 0


def test_a_failing_crewai_task_fails_the_job_with_its_traceback(server: Server, baton: Client) -> None:
    kind = unique("crewai-fail")
    worker = Worker(server.url)
    script = Script(fail_in="draft")

    @worker.handler(kind)
    def research(ctx: SyncContext, payload: Any) -> Any:
        return run_crew(ctx, make_crew(script), payload)

    with serving(worker):
        job = baton.submit(kind, {"topic": "failures"}, max_attempts=1)
        done = baton.wait(job.id, timeout=60)

    assert done.state == "failed" and done.error is not None
    message = done.error.message
    assert message.startswith("RuntimeError: the scripted model is down for draft"), message
    assert "Traceback (most recent call last)" in message and "in call" in message
    events = baton.job_events(job.id)
    assert [[t["name"] for t in e.data["checkpoint"]["tasks"]] for e in of(events, "job.checkpoint")] == [
        ["research"]
    ]
    # CrewAI's own retries of the failing task (max_retry_limit, 2) came first.
    assert script.calls == ["research", "research", "draft", "draft", "draft"]


def test_a_crewai_job_retried_from_its_checkpoint_does_not_run_its_finished_tasks_again(
    server: Server, baton: Client
) -> None:
    kind = unique("crewai-retry")
    worker = Worker(server.url)
    script = Script(fail_in="draft")
    crews: List[Any] = []

    @worker.handler(kind)
    @crew_handler
    def research(ctx: SyncContext, payload: Any) -> Any:
        crews.append(make_crew(script))
        return crews[-1]

    with serving(worker):
        job = baton.submit(kind, {"topic": "retries"}, max_attempts=1)
        assert baton.wait(job.id, timeout=60).state == "failed"
        first = baton.get(job.id)
        script.fail_in = None
        script.calls.clear()
        script.prompts.clear()
        baton.retry(job.id, from_checkpoint=True)
        done = baton.wait(job.id, timeout=60)

    assert first.state == "failed"
    assert done.state == "completed", done.error
    assert script.calls == ["draft", "draft", "edit", "edit"]
    research_output = "Research retries. Done, from notes on research."
    assert [t["raw"] for t in done.result["tasks"]] == [
        research_output,
        "Draft an article on retries. Done, from outline of draft.",
        "Edit the article on retries. Done, from notes on edit.",
    ]
    # The kept task's output still feeds the tasks after it.
    assert research_output in script.prompts["draft"]
    # The crew is left as CrewAI's resume found it.
    assert len(crews) == 2 and crews[1].checkpoint_kickoff_event_id is None
    lines = [e.data["line"] for e in of(baton.job_events(job.id), "job.log")]
    assert (
        "resuming after 1 of 3 tasks finished by an earlier attempt (research); they are not run again"
        in lines
    ), lines


EXAMPLE = REPO / "examples" / "python" / "crew.py"


def test_the_crew_example_resumes_after_kill_9_without_running_its_finished_task_again(
    own_server: Server, tmp_path: Path
) -> None:
    env = {**os.environ, "BATON_URL": own_server.url}
    env.pop("BATON_TOKEN", None)
    procs: List["subprocess.Popen[bytes]"] = []

    def start(name: str, *args: str) -> "subprocess.Popen[bytes]":
        with open(tmp_path / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(
                [sys.executable, str(EXAMPLE), *args], env=env, stdout=out, stderr=subprocess.STDOUT
            )
        procs.append(proc)
        return proc

    def output(name: str) -> str:
        return (tmp_path / f"{name}.log").read_text(errors="replace")

    try:
        with Client(own_server.url) as baton:
            first = start("first", "--offline", "--delay", "0.5")
            wait_for("the example's worker", lambda: len(baton.workers()) == 1, 60)
            submitter = start("submit", "submit", "job", "engines")
            wait_for("the job", lambda: any(True for _ in baton.list(kind="research")))
            job = next(iter(baton.list(kind="research")))
            with baton.events(job=job.id) as events:
                for event in events:
                    if event.type == "job.checkpoint":
                        kept = event.data["checkpoint"]["tasks"]
                        break
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            wait_for("the recovery", lambda: baton.get(job.id).state == "queued", 60)

            start("second", "--offline", "--delay", "0.05")
            done = baton.wait(job.id, timeout=120)
            assert done.state == "completed", done.error
            assert submitter.wait(60) == 0, output("submit")

        assert [t["name"] for t in kept] == ["research"]
        assert done.result["tasks"][0] == kept[0]
        assert [t["name"] for t in done.result["tasks"]] == ["research", "draft", "edit"]
        assert done.result["raw"].startswith(
            "Check the draft about job engines against the notes and shorten it. Done"
        )
        assert "scripted model: research" in output("first")
        second = output("second")
        assert "scripted model: research" not in second, second
        assert "scripted model: draft" in second and "scripted model: edit" in second
        # What the person who submitted the job saw.
        printed = output("submit")
        assert "step: Researcher: search" in printed and "crashed" in printed and "recovered" in printed
        assert "1/3 tasks finished by an earlier attempt" in printed and "3/3 tasks done: edit" in printed
        assert printed.rstrip().splitlines()[-1].startswith("completed Check the draft about job engines"), (
            printed
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)
