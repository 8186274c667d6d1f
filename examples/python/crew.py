"""A research crew (CrewAI) served as the job kind `research`: each agent step shows as
the job's step, each finished task is a checkpoint and progress, and the crew's answer
is the job's result. A crew killed mid-run resumes without running its finished tasks
again.

Run it against a local server (`cargo run --release -- serve` in the repository):

    pip install ./sdk/python 'crewai==1.15.30'          # CrewAI needs Python 3.10 to 3.13
    python examples/python/crew.py --offline            # a scripted model: no key, no network
    OPENAI_API_KEY=... python examples/python/crew.py --model gpt-4o-mini   # or a real one
    python examples/python/crew.py submit job engines   # in another terminal: a job, followed live
    kill -9 <the worker's pid>                          # after the first task; start the worker
                                                        # again: it carries on from the second

BATON_URL (default http://127.0.0.1:7700) and BATON_TOKEN (an operator's token, when
auth is on) say where the server is. `--delay SECONDS` slows the scripted model down,
to watch the steps (or to kill the worker between two tasks).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Any, Dict, List, Optional

from baton_client import Client, SyncContext, Worker
from baton_client.agents import crew_handler

URL = os.environ.get("BATON_URL", "http://127.0.0.1:7700")
TOKEN = os.environ.get("BATON_TOKEN")

worker = Worker(URL, token=TOKEN, concurrency=1, name=f"crew-{os.getpid()}")

# The model the crews use: a name CrewAI knows ("gpt-4o-mini", "anthropic/claude-...")
# or a scripted one; set by main().
MODEL: Any = None


@worker.handler("research")
@crew_handler
def research(ctx: SyncContext, payload: Dict[str, Any]) -> Any:
    """A crew of its own for each job; kicked off with the payload as its inputs
    ({"topic": ...} fills the tasks' {topic})."""
    return research_crew(MODEL)


def research_crew(llm: Any) -> Any:
    from crewai import Agent, Crew, Task  # type: ignore[import-not-found, unused-ignore]
    from crewai.tools import tool  # type: ignore[import-not-found, unused-ignore]

    @tool("search")  # type: ignore[misc, untyped-decorator, unused-ignore]
    def search(query: str) -> str:
        """Searches the team's notes for a query."""
        return f"notes on {query}: durable jobs, checkpoints, live control, one binary"

    @tool("outline")  # type: ignore[misc, untyped-decorator, unused-ignore]
    def outline(facts: str) -> str:
        """Turns facts into an outline of sections."""
        return "outline: 1. what it is 2. why it matters 3. how to start"

    researcher = Agent(
        role="Researcher",
        goal="Find the facts about {topic}",
        backstory="You check every claim in the team's notes.",
        tools=[search],
        llm=llm,
    )
    writer = Agent(
        role="Writer",
        goal="Write a short, plain article about {topic}",
        backstory="You write for busy engineers.",
        tools=[outline],
        llm=llm,
    )
    editor = Agent(
        role="Editor",
        goal="Make the article about {topic} correct and short",
        backstory="You cut every word that does not help.",
        tools=[search],
        llm=llm,
    )
    return Crew(
        agents=[researcher, writer, editor],
        tasks=[
            Task(
                name="research",
                description="Find the facts about {topic}.",
                expected_output="facts",
                agent=researcher,
            ),
            Task(
                name="draft",
                description="Draft an article about {topic} from the facts.",
                expected_output="a draft",
                agent=writer,
            ),
            Task(
                name="edit",
                description="Check the draft about {topic} against the notes and shorten it.",
                expected_output="the article",
                agent=editor,
            ),
        ],
    )


def scripted_model(delay: float) -> Any:
    """A model that needs no key and no network: each agent calls its first tool once,
    then answers from what the tool said. Each call is printed."""
    from crewai.llms.base_llm import BaseLLM  # type: ignore[import-not-found, unused-ignore]

    class Scripted(BaseLLM):  # type: ignore[misc, unused-ignore]
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
            task = getattr(from_task, "name", None) or "task"
            print(f"scripted model: {task}", flush=True)
            time.sleep(delay)
            history: List[Dict[str, Any]] = [] if isinstance(messages, str) else list(messages)
            said = [m for m in history if m.get("role") == "assistant"]
            agent_tools = getattr(from_agent, "tools", None) or []
            if agent_tools and not said:
                name = agent_tools[0].name
                argument = f'{{"{_argument(name)}": "{task}"}}'
                return f"Thought: I should use {name}\nAction: {name}\nAction Input: {argument}"
            observed = str(said[-1].get("content", "")).rpartition("Observation:")[2].strip() if said else ""
            description = getattr(from_task, "description", task)
            return (
                f"Thought: I know enough\nFinal Answer: {description} Done, from {observed or 'what I know'}."
            )

        def supports_function_calling(self) -> bool:
            return False

    return Scripted(model="scripted")


def _argument(tool: str) -> str:
    return {"search": "query", "outline": "facts"}.get(tool, "input")


def submit(topic: str) -> None:
    """Submits a job and prints its steps and progress as they happen, then its result."""
    with Client(URL, token=TOKEN) as baton:
        job = baton.submit("research", {"topic": topic}, max_recoveries=10)
        print(f"job {job.id}", flush=True)
        with baton.events(job=job.id) as events:
            for event in events:
                if event.type == "job.step":
                    print(f"  step: {event.data['step']}", flush=True)
                elif event.type == "job.progress":
                    print(f"  {event.data.get('message')}", flush=True)
                elif event.type in ("job.crashed", "job.recovered"):
                    print(f"  {event.type[4:]}", flush=True)
                if baton.get(job.id).terminal and event.type in (
                    "job.completed",
                    "job.failed",
                    "job.cancelled",
                ):
                    break
        done = baton.wait(job.id)
        print(done.state, done.result["raw"] if done.result else done.error, flush=True)


def main(argv: Optional[List[str]] = None) -> None:
    global MODEL
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["submit"]:
        submit(" ".join(args[1:]) or "job engines")
        return
    parser = argparse.ArgumentParser(description="A worker that serves research crews")
    parser.add_argument("--offline", action="store_true", help="a scripted model: no key, no network")
    parser.add_argument("--delay", type=float, default=0.0, help="seconds per call of the scripted model")
    parser.add_argument("--model", default=os.environ.get("BATON_CREW_MODEL", "gpt-4o-mini"))
    options = parser.parse_args(args)
    if options.offline:
        os.environ.setdefault("CREWAI_DISABLE_TELEMETRY", "true")
        os.environ.setdefault("OTEL_SDK_DISABLED", "true")
        MODEL = scripted_model(options.delay)
    else:
        MODEL = options.model
    worker.run()


if __name__ == "__main__":
    main()
