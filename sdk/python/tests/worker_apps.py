"""Handlers that the worker tests run in worker processes of their own
(`python -m baton_client worker worker_apps:worker`) or in child processes
(`process=True`, which need a function importable by its module's name)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Dict

from baton_client import SyncContext, Worker

worker = Worker("http://127.0.0.1:7700", name="test-worker", grace=10)


@worker.handler("py-crash")
def crawl(ctx: SyncContext, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Pages `payload["pages"]` pages, one each `delay` seconds, checkpointing its
    cursor; a later attempt carries on from the cursor. Appends its token to the file
    `payload["tokens"]`."""
    with open(payload["tokens"], "a") as f:
        f.write(f"{ctx.token}\n")
    start = int((ctx.last_checkpoint or {}).get("page", 0))
    pages = int(payload["pages"])
    for page in range(start, pages):
        time.sleep(float(payload.get("delay", 0.05)))
        ctx.checkpoint({"page": page + 1})
        ctx.progress((page + 1) / pages)
    return {"resumed_from": start, "pages": pages, "pid": os.getpid()}


@worker.handler("py-many")
def once(ctx: SyncContext, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Appends `job pid token` to the file `payload["file"]`: a job run twice shows."""
    with open(payload["file"], "a") as f:
        f.write(f"{ctx.job_id} {os.getpid()} {ctx.token}\n")
    ctx.progress(1.0, "done")
    return {"pid": os.getpid()}


@worker.handler("py-slow")
def slow(ctx: SyncContext, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Runs `payload["seconds"]`, reporting progress each tenth of a second."""
    seconds = float(payload["seconds"])
    started = time.monotonic()
    while time.monotonic() - started < seconds:
        ctx.progress((time.monotonic() - started) / seconds)
        time.sleep(0.1)
    return {"slept": seconds, "pid": os.getpid()}


def busy(ctx: SyncContext, payload: Dict[str, Any]) -> Dict[str, Any]:
    """Never calls a pause point: counts in the file `payload["file"]` (rewritten each
    tenth of a second) until it has counted `payload["until"]` (only signals pause or
    stop it)."""
    path = Path(payload["file"])
    count = 0
    while count < int(payload["until"]):
        count += 1
        path.write_text(str(count))
        time.sleep(0.1)
    return {"count": count}


def checkpoints(ctx: SyncContext, payload: Dict[str, Any]) -> Dict[str, Any]:
    """In a child process: reports, checkpoints (durable when it returns), reads its
    parent data, and returns."""
    ctx.step("child")
    ctx.progress(0.5, "half")
    ctx.log(f"pid {os.getpid()}")
    ctx.checkpoint({"n": 1})
    ctx.output("from the child")
    return {"pid": os.getpid(), "checkpoint": ctx.last_checkpoint, "attempt": ctx.attempt}


def fails(ctx: SyncContext, payload: Dict[str, Any]) -> None:
    raise RuntimeError(f"failed in the child {os.getpid()}")


worker.handler("py-busy-process", process=True)(busy)
