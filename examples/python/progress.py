"""A live progress printer: follows the server's event stream and prints each job's
progress, step and outcome as they happen.

Against a local server (`cargo run --release -- serve` in the repository):

    pip install ./sdk/python
    python examples/python/progress.py            # every job, from now on (Ctrl-C ends it)
    python examples/python/progress.py JOB_ID     # one job, its history first; ends with the job

Run `scraper.py` and `scraper.py submit` beside it to have something to watch.
BATON_URL (default http://127.0.0.1:7700) and BATON_TOKEN say where the server is.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

from baton_client import Client, Event
from baton_client.models import TERMINAL_EVENTS

URL = os.environ.get("BATON_URL", "http://127.0.0.1:7700")
TOKEN = os.environ.get("BATON_TOKEN")


def bar(fraction: float, width: int = 30) -> str:
    done = round(fraction * width)
    return "[" + "#" * done + "." * (width - done) + f"] {fraction * 100:5.1f}%"


def line(event: Event) -> Optional[str]:
    job = (event.job_id or "")[-8:]
    data = event.data
    if event.type == "job.progress":
        fraction = data.get("progress")
        text = bar(fraction) if isinstance(fraction, (int, float)) else ""
        return f"{job} {text} {data.get('message') or ''}".rstrip()
    if event.type == "job.step":
        return f"{job} step {data.get('step')}"
    if event.type in ("job.started", "job.paused", "job.resumed", "job.crashed", "job.recovered"):
        return f"{job} {event.type[4:]}"
    if event.type in TERMINAL_EVENTS:
        error = data.get("error") or {}
        return f"{job} {event.type[4:]} {error.get('message', '')}".rstrip()
    return None


def main(job: Optional[str]) -> None:
    with Client(URL, token=TOKEN) as baton, baton.events(job=job) as events:
        for event in events:
            text = line(event)
            if text:
                print(text, flush=True)
            if job and event.type in TERMINAL_EVENTS and baton.get(job).terminal:
                return


if __name__ == "__main__":
    try:
        main(sys.argv[1] if len(sys.argv) > 1 else None)
    except KeyboardInterrupt:
        pass
