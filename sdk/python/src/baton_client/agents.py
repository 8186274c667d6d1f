"""Agent crews as Baton jobs: a CrewAI crew, or anything run with step and task
callbacks, reported as the job it runs in.

    from baton_client.agents import crew_handler

    @worker.handler("research")
    @crew_handler
    def research(ctx: SyncContext, payload: Any) -> Crew:
        return Crew(agents=[...], tasks=[...])      # kicked off with the payload as inputs

Each agent step becomes the job's step (`job.step`, named after the agent's role and
the tool it used), each finished task a checkpoint (every finished task's output so
far) and progress (tasks done of tasks in the crew), and the crew's output the job's
result. The callbacks are pause points: a paused job holds the crew at its next step,
a stopped one ends it there. A resumed job keeps the tasks an earlier attempt
finished: a CrewAI crew skips them (their outputs still feed later tasks), a callable
that takes `finished=` is given them to skip.

CrewAI is not a dependency: this module never imports it unless the crew it is given
is one (and then only parts of it that are loaded already, or its own modules).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import importlib
import inspect
import json
import sys
import threading
from typing import Any, Callable, Coroutine, Dict, List, Mapping, Optional, Tuple, Type

from typing_extensions import Protocol

from ._protocol import Fatal, MessageTooLarge, Stopped
from .context import Context, SyncContext
from .worker import _on_thread

# Names the step a callback was given by the agent's role and the step itself; None
# when the call is not a step of its own (it is then left out, and is no pause point).
StepNamer = Callable[[Optional[str], Any], Optional[str]]

# A step's name is cut to this many characters, a step's text in the job's log to this.
MAX_STEP_NAME = 200
MAX_STEP_TEXT = 4000


def default_step_name(role: Optional[str], step: Any) -> Optional[str]:
    """`"Researcher: search"` for an agent's tool call, `"Writer: final answer"` for
    its answer, the text itself for a string; None for a tool's result alone (CrewAI
    reports it just before the action that used the tool, which is the step: the job
    pauses there, where its step names the tool)."""
    if isinstance(step, str):
        what = step
    elif hasattr(step, "result_as_answer") and not hasattr(step, "tool"):
        return None
    elif getattr(step, "tool", None):
        what = str(step.tool)
    elif hasattr(step, "output"):
        what = "final answer"
    else:
        what = str(getattr(step, "name", None) or type(step).__name__)
    role = role or _role(getattr(step, "agent", None))
    name = f"{role}: {what}" if role else what
    return " ".join(name.split())[:MAX_STEP_NAME]


def finished_tasks(checkpoint: Any) -> List[Dict[str, Any]]:
    """The tasks an earlier attempt finished, from its last checkpoint
    (`ctx.last_checkpoint`), in task order: each a dict with `index`, `name`,
    `description`, `agent`, `raw`, `json` and `pydantic`."""
    tasks = checkpoint.get("tasks") if isinstance(checkpoint, dict) else None
    if not isinstance(tasks, list):
        return []
    kept = [t for t in tasks if isinstance(t, dict) and isinstance(t.get("index"), int)]
    return sorted(kept, key=lambda t: int(t["index"]))


def run_crew(
    ctx: SyncContext,
    crew: Any,
    inputs: Optional[Mapping[str, Any]] = None,
    *,
    total: Optional[int] = None,
    step_name: StepNamer = default_step_name,
    log_steps: bool = True,
) -> Dict[str, Any]:
    """Runs `crew` in a sync handler and returns the job's result: `raw` (the crew's
    final output), `tasks` (each finished task's record, as `finished_tasks` gives
    them), and `json`, `pydantic` and `token_usage` when the crew's output has them.

    `crew` is a CrewAI `Crew` (kicked off with `inputs`); or an object with
    `kickoff()`, `step_callback` and `task_callback` (set for the run, then put
    back); or a callable called as `crew(step_callback=..., task_callback=...)`, with
    `inputs=` when there are inputs. Either of the last two is given `finished=` (the
    tasks an earlier attempt finished, to skip) when its signature names it.
    `total` is the number of tasks, for the progress fraction, when the crew has no
    `tasks` list to count. `log_steps` puts each step's text in the job's log."""
    if isinstance(ctx, Context):
        raise TypeError(
            "run_crew takes a sync handler's SyncContext: an async handler awaits arun_crew(ctx, ...)"
        )
    return _Run(ctx, total, step_name, log_steps).run(crew, inputs)


async def arun_crew(
    ctx: Context,
    crew: Any,
    inputs: Optional[Mapping[str, Any]] = None,
    *,
    total: Optional[int] = None,
    step_name: StepNamer = default_step_name,
    log_steps: bool = True,
) -> Dict[str, Any]:
    """`run_crew` for an async handler: the crew runs on a thread of its own (it
    blocks), and its callbacks reach `ctx` on the worker's loop."""
    if not isinstance(ctx, Context):
        raise TypeError("arun_crew takes an async handler's Context: a sync handler calls run_crew(ctx, ...)")
    loop = asyncio.get_running_loop()
    run = _Run(_LoopReporter(ctx, loop), total, step_name, log_steps)
    result: Dict[str, Any] = await _on_thread(
        functools.partial(run.run, crew, inputs), f"baton-crew-{ctx.job_id}"
    )
    return result


def crew_handler(build: Callable[[SyncContext, Any], Any]) -> Callable[[SyncContext, Any], Dict[str, Any]]:
    """A sync handler from `build(ctx, payload)`, which makes the crew of one job (a
    crew of its own each time: CrewAI keeps callbacks on a crew's agents and tasks):
    the crew runs with `run_crew`, its inputs the payload when that is an object."""

    def handle(ctx: SyncContext, payload: Any) -> Dict[str, Any]:
        crew = build(ctx, payload)
        return run_crew(ctx, crew, payload if isinstance(payload, Mapping) else None)

    handle.__name__ = getattr(build, "__name__", "crew_handler")
    handle.__qualname__ = getattr(build, "__qualname__", handle.__name__)
    handle.__doc__ = build.__doc__
    return handle


class _Reporter(Protocol):
    """What a run needs of its job's context, from any thread."""

    @property
    def last_checkpoint(self) -> Any: ...

    @property
    def cancelled(self) -> bool: ...

    def step(self, name: str) -> None: ...

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None: ...

    def log(self, text: str) -> None: ...

    def checkpoint(self, data: Any) -> None: ...

    def pause_point(self) -> None: ...


class _LoopReporter:
    """An async handler's `Context` driven from the crew's threads: each call runs on
    the worker's loop, and the calling thread waits for it."""

    def __init__(self, ctx: Context, loop: asyncio.AbstractEventLoop) -> None:
        self._ctx = ctx
        self._loop = loop

    @property
    def last_checkpoint(self) -> Any:
        return self._ctx.last_checkpoint

    @property
    def cancelled(self) -> bool:
        return self._ctx.cancelled

    def _call(self, coro: Coroutine[Any, Any, None]) -> None:
        try:
            future = asyncio.run_coroutine_threadsafe(coro, self._loop)
        except RuntimeError:
            coro.close()
            raise Stopped("the worker has ended") from None
        try:
            future.result()
        except concurrent.futures.CancelledError:
            raise Stopped("the worker has ended") from None

    def step(self, name: str) -> None:
        self._call(self._ctx.step(name))

    def progress(self, fraction: Optional[float] = None, message: Optional[str] = None) -> None:
        self._call(self._ctx.progress(fraction, message))

    def log(self, text: str) -> None:
        self._call(self._ctx.log(text))

    def checkpoint(self, data: Any) -> None:
        self._call(self._ctx.checkpoint(data))

    def pause_point(self) -> None:
        self._call(self._ctx.pause_point())


class _Run:
    """One crew's run in one job's attempt: its callbacks, and the tasks finished."""

    def __init__(self, ctx: _Reporter, total: Optional[int], step_name: StepNamer, log_steps: bool) -> None:
        self.ctx = ctx
        self.total = total
        self.step_name = step_name
        self.log_steps = log_steps
        self.lock = threading.Lock()
        # Finished tasks by index: kept from an earlier attempt, then this one's.
        self.tasks: Dict[int, Dict[str, Any]] = {}
        self.fraction: Optional[float] = None
        self.stop_class: Type[Stopped] = Stopped
        # What a resumed CrewAI crew had as checkpoint_kickoff_event_id, to put back.
        self.resumed_from: Optional[Tuple[Any]] = None

    def run(self, crew: Any, inputs: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
        earlier = finished_tasks(self.ctx.last_checkpoint)
        if _is_crewai_crew(crew):
            self.stop_class = _crewai_stop_class()
            if self.total is None:
                self.total = len(crew.tasks)
            self._restore(crew, earlier)
            call: Callable[[], Any] = functools.partial(self._kickoff_crewai, crew, inputs)
        elif (
            callable(getattr(crew, "kickoff", None))
            and hasattr(crew, "step_callback")
            and hasattr(crew, "task_callback")
        ):
            if self.total is None:
                self.total = _count(getattr(crew, "tasks", None))
            kwargs = self._arguments(crew.kickoff, inputs, earlier)
            call = functools.partial(self._kickoff_object, crew, kwargs)
        elif callable(crew):
            kwargs = self._arguments(crew, inputs, earlier)
            kwargs.update(
                step_callback=self._step_callback(None, None), task_callback=self._task_callback(None, None)
            )
            call = functools.partial(crew, **kwargs)
        else:
            raise TypeError(
                "run_crew takes a CrewAI Crew, an object with kickoff(), step_callback and task_callback, "
                f"or a callable that takes step_callback= and task_callback=; not {type(crew).__name__}"
            )
        try:
            output = call()
        except Stopped:
            raise
        except Exception as e:
            # A stop that the crew turned into an error of its own is still a stop.
            if self.ctx.cancelled or _caused_by_stop(e):
                raise Stopped(f"the crew was stopped: {e}") from e
            raise
        result = _result(output, self._finished())
        if self.fraction != 1.0:
            self.ctx.progress(1.0, self._done_message())
        return result

    # Kicking off

    def _arguments(
        self, fn: Callable[..., Any], inputs: Optional[Mapping[str, Any]], earlier: List[Dict[str, Any]]
    ) -> Dict[str, Any]:
        kwargs: Dict[str, Any] = {}
        if inputs is not None:
            kwargs["inputs"] = dict(inputs)
        if _takes(fn, "finished"):
            kwargs["finished"] = [dict(t) for t in earlier]
            self._keep(earlier)
        elif earlier:
            self.ctx.log(
                f"an earlier attempt finished {_count_text(len(earlier))} ({_names(earlier)}); "
                "this crew takes no finished= and runs from its first task"
            )
        return kwargs

    def _kickoff_object(self, crew: Any, kwargs: Dict[str, Any]) -> Any:
        saved = (crew.step_callback, crew.task_callback)
        crew.step_callback = self._step_callback(None, saved[0])
        crew.task_callback = self._task_callback(None, saved[1])
        try:
            return crew.kickoff(**kwargs)
        finally:
            crew.step_callback, crew.task_callback = saved

    def _kickoff_crewai(self, crew: Any, inputs: Optional[Mapping[str, Any]]) -> Any:
        # CrewAI calls an agent's own step callback, or the crew's when it has none,
        # and keeps the crew's on the agents and tasks after a kickoff: each agent gets
        # one that knows its role for the run, and everything is put back after it.
        agents: List[Any] = []
        for agent in [*crew.agents, *(t.agent for t in crew.tasks), getattr(crew, "manager_agent", None)]:
            if agent is not None and not any(agent is a for a in agents):
                agents.append(agent)
        crew_step, crew_task = crew.step_callback, crew.task_callback
        agent_steps = [agent.step_callback for agent in agents]
        task_callbacks = [task.callback for task in crew.tasks]
        try:
            for agent, own in zip(agents, agent_steps):
                agent.step_callback = self._step_callback(agent, own or crew_step)
            crew.step_callback = self._step_callback(None, crew_step)
            crew.task_callback = self._task_callback(crew, crew_task)
            return crew.kickoff(inputs=dict(inputs) if inputs is not None else None)
        finally:
            crew.step_callback, crew.task_callback = crew_step, crew_task
            for agent, own in zip(agents, agent_steps):
                agent.step_callback = own
            for task, callback in zip(crew.tasks, task_callbacks):
                task.callback = callback
            if self.resumed_from is not None:
                crew.checkpoint_kickoff_event_id = self.resumed_from[0]

    def _restore(self, crew: Any, earlier: List[Dict[str, Any]]) -> None:
        """Gives a CrewAI crew the outputs of the tasks an earlier attempt finished, so
        that it starts at the first task without one (as it does when it resumes from
        a checkpoint of its own); they still feed the tasks after them."""
        if not earlier:
            return
        tasks = list(crew.tasks)
        by_index = {int(t["index"]): t for t in earlier}
        prefix: List[Dict[str, Any]] = []
        while len(prefix) < len(tasks) and len(prefix) in by_index:
            record = by_index[len(prefix)]
            name = getattr(tasks[len(prefix)], "name", None)
            if name and record.get("name") and record["name"] != name:
                break
            prefix.append(record)
        if not prefix or not hasattr(crew, "checkpoint_kickoff_event_id"):
            self.ctx.log(
                f"an earlier attempt finished {_count_text(len(earlier))} ({_names(earlier)}), "
                "which do not match this crew's first tasks; the crew runs from its first task"
            )
            return
        TaskOutput = importlib.import_module("crewai.tasks.task_output").TaskOutput

        for task, record in zip(tasks, prefix):
            task.output = TaskOutput(
                name=record.get("name"),
                description=str(record.get("description") or task.description),
                expected_output=getattr(task, "expected_output", None),
                raw=str(record.get("raw") or ""),
                json_dict=record.get("json") if isinstance(record.get("json"), dict) else None,
                pydantic=_pydantic(task, record.get("pydantic")),
                agent=str(record.get("agent") or ""),
            )
        for task in tasks[len(prefix) :]:
            task.output = None
        # Read by CrewAI's kickoff: start at the first task that has no output.
        self.resumed_from = (crew.checkpoint_kickoff_event_id,)
        crew.checkpoint_kickoff_event_id = ""
        self.ctx.log(
            f"resuming after {len(prefix)} of {len(tasks)} tasks finished by an earlier attempt "
            f"({_names(prefix)}); they are not run again"
        )
        self._keep(prefix)

    def _keep(self, earlier: List[Dict[str, Any]]) -> None:
        for record in earlier:
            self.tasks[int(record["index"])] = dict(record)
        if self.tasks:
            done = len(self.tasks)
            self._progress(f"{self._of(done)} finished by an earlier attempt")

    # Callbacks, called from the crew's threads

    def _step_callback(self, agent: Any, chained: Optional[Callable[..., Any]]) -> Callable[[Any], Any]:
        def on_step(step: Any) -> Any:
            try:
                name = self.step_name(_role(agent), step)
                if name is not None:
                    if self.log_steps:
                        text = _step_text(step)
                        if text:
                            self.ctx.log(f"{name}: {text}")
                    self.ctx.step(name)
            except Stopped as e:
                raise self.stop_class(str(e)) from None
            return chained(step) if chained is not None else None

        return on_step

    def _task_callback(self, crew: Any, chained: Optional[Callable[..., Any]]) -> Callable[[Any], Any]:
        def on_task(output: Any) -> Any:
            index = _index_of(crew, output)
            record = _task_record(output)
            try:
                with self.lock:
                    if index is None or index in self.tasks:
                        index = next(i for i in range(len(self.tasks) + 1) if i not in self.tasks)
                    record["index"] = index
                    self.tasks[index] = record
                    # Under the lock: checkpoints saved in the order the tasks finished.
                    try:
                        self.ctx.checkpoint({"tasks": self._finished()})
                    except MessageTooLarge as e:
                        # It would be on a retry too, after the same model calls.
                        raise Fatal(
                            f"the checkpoint after task {_label(record)} is too large ({e.message}): "
                            "the outputs of a crew's finished tasks must fit in one message"
                        ) from e
                    done = len(self.tasks)
                self._progress(f"{self._of(done)} done: {_label(record)}")
            except Stopped as e:
                raise self.stop_class(str(e)) from None
            return chained(output) if chained is not None else None

        return on_task

    # Reports

    def _finished(self) -> List[Dict[str, Any]]:
        return [self.tasks[i] for i in sorted(self.tasks)]

    def _of(self, done: int) -> str:
        return f"{done}/{self.total} tasks" if self.total else _count_text(done)

    def _done_message(self) -> str:
        return f"the crew finished: {self._of(len(self.tasks))} done"

    def _progress(self, message: str) -> None:
        fraction = min(1.0, len(self.tasks) / self.total) if self.total else None
        if fraction is not None:
            self.fraction = fraction
        self.ctx.progress(fraction, message)


def _is_crewai_crew(crew: Any) -> bool:
    """Whether `crew` is a CrewAI `Crew` (CrewAI is loaded then: nothing is imported)."""
    cls = getattr(sys.modules.get("crewai.crew"), "Crew", None)
    return isinstance(cls, type) and isinstance(crew, cls)


_STOP_CLASSES: Dict[type, Type[Stopped]] = {}


def _crewai_stop_class() -> Type[Stopped]:
    """A `Stopped` that CrewAI lets through: it retries a task whose agent raised an
    error (calling the model again) unless the error is one of its deliberate aborts,
    a `HookAborted`."""
    try:
        aborted = getattr(importlib.import_module("crewai.hooks.dispatch"), "HookAborted", None)
    except ImportError:
        return Stopped
    if not (isinstance(aborted, type) and issubclass(aborted, Exception)):
        return Stopped
    cls = _STOP_CLASSES.get(aborted)
    if cls is None:
        cls = type("CrewStopped", (Stopped, aborted), {"__module__": __name__, "__doc__": Stopped.__doc__})
        _STOP_CLASSES[aborted] = cls
    return cls


def _caused_by_stop(e: BaseException) -> bool:
    seen = set()
    todo: List[Optional[BaseException]] = [e]
    while todo:
        x = todo.pop()
        if x is None or id(x) in seen:
            continue
        seen.add(id(x))
        if isinstance(x, Stopped):
            return True
        todo += [x.__cause__, x.__context__]
    return False


def _takes(fn: Callable[..., Any], name: str) -> bool:
    try:
        parameters = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    p = parameters.get(name)
    return p is not None and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)


def _index_of(crew: Any, output: Any) -> Optional[int]:
    """The index of the task whose output `output` is (CrewAI sets a task's output
    before its callback), when the crew's tasks can tell."""
    for i, task in enumerate(getattr(crew, "tasks", None) or ()):
        if getattr(task, "output", None) is output:
            return i
    return None


def _count(tasks: Any) -> Optional[int]:
    try:
        return len(tasks) or None
    except TypeError:
        return None


def _role(agent: Any) -> Optional[str]:
    if agent is None:
        return None
    if isinstance(agent, str):
        return agent or None
    role = getattr(agent, "role", None)
    return str(role) if role else None


def _step_text(step: Any) -> str:
    if isinstance(step, str):
        return ""
    text = getattr(step, "text", None) or getattr(step, "thought", None) or ""
    text = str(text).strip()
    return text if len(text) <= MAX_STEP_TEXT else text[: MAX_STEP_TEXT - 3] + "..."


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def _dump(model: Any) -> Any:
    """A pydantic model as JSON data, or None."""
    dump = getattr(model, "model_dump", None)
    if model is None or not callable(dump):
        return None
    try:
        data = dump(mode="json")
    except Exception:  # noqa: BLE001 (a model that cannot be dumped is left out)
        return None
    return data if _jsonable(data) else None


def _pydantic(task: Any, data: Any) -> Any:
    model = getattr(task, "output_pydantic", None)
    validate = getattr(model, "model_validate", None)
    if data is None or not callable(validate):
        return None
    try:
        return validate(data)
    except Exception:  # noqa: BLE001 (the raw text is still there)
        return None


def _task_record(output: Any) -> Dict[str, Any]:
    """A finished task as JSON: a CrewAI `TaskOutput`'s fields, or what a crew-like
    object passed to its task callback."""
    if isinstance(output, str):
        raw: Any = output
    else:
        raw = getattr(output, "raw", None)
        if raw is None:
            raw = output if _jsonable(output) else str(output)
    json_dict = getattr(output, "json_dict", None)
    name = getattr(output, "name", None)
    description = getattr(output, "description", None)
    return {
        "index": None,
        "name": str(name) if name else None,
        "description": str(description) if description else None,
        "agent": _role(getattr(output, "agent", None)),
        "raw": raw if _jsonable(raw) else str(raw),
        "json": json_dict if isinstance(json_dict, dict) and _jsonable(json_dict) else None,
        "pydantic": _dump(getattr(output, "pydantic", None)),
    }


def _result(output: Any, tasks: List[Dict[str, Any]]) -> Dict[str, Any]:
    if isinstance(output, str):
        raw: Any = output
    else:
        raw = getattr(output, "raw", None)
        if raw is None:
            raw = output if _jsonable(output) else str(output)
    result: Dict[str, Any] = {"raw": raw, "tasks": tasks}
    json_dict = getattr(output, "json_dict", None)
    if isinstance(json_dict, dict) and _jsonable(json_dict):
        result["json"] = json_dict
    pydantic = _dump(getattr(output, "pydantic", None))
    if pydantic is not None:
        result["pydantic"] = pydantic
    usage = _dump(getattr(output, "token_usage", None))
    if usage is not None:
        result["token_usage"] = usage
    return result


def _label(record: Dict[str, Any]) -> str:
    label = record.get("name") or record.get("agent") or f"task {int(record['index']) + 1}"
    label = " ".join(str(label).split())
    return label if len(label) <= 80 else label[:77] + "..."


def _names(records: List[Dict[str, Any]]) -> str:
    return ", ".join(_label(r) for r in records)


def _count_text(n: int) -> str:
    return f"{n} task" if n == 1 else f"{n} tasks"


__all__: Tuple[str, ...] = (
    "StepNamer",
    "arun_crew",
    "crew_handler",
    "default_step_name",
    "finished_tasks",
    "run_crew",
)
