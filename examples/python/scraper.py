"""A scraper that survives `kill -9`: its handler checkpoints its page cursor, and an
attempt that starts after a crash carries on from `ctx.last_checkpoint`.

Run it against a local server (`cargo run --release -- serve` in the repository):

    pip install ./sdk/python
    python examples/python/scraper.py                 # the worker; leave it running
    python examples/python/scraper.py submit 200      # in another terminal: a job of 200 pages
    kill -9 <the worker's pid>                        # mid-job; the job is crashed and queued again
    python examples/python/scraper.py                 # a new worker resumes from the last checkpoint

BATON_URL (default http://127.0.0.1:7700) and BATON_TOKEN (an operator's token, when
auth is on) say where the server is. `python -m baton_client worker scraper:worker`
runs the same worker from this folder.
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from typing import Any, Dict

from baton_client import Client, SyncContext, Worker

URL = os.environ.get("BATON_URL", "http://127.0.0.1:7700")
TOKEN = os.environ.get("BATON_TOKEN")

worker = Worker(URL, token=TOKEN, concurrency=2, name=f"scraper-{os.getpid()}")


def fetch(site: str, page: int) -> str:
    """Stands in for an HTTP request: a page's content, the same on every run."""
    return hashlib.sha256(f"{site}/{page}".encode()).hexdigest()


@worker.handler("scrape")
def scrape(ctx: SyncContext, payload: Dict[str, Any]) -> Dict[str, Any]:
    site, pages = payload.get("site", "example.org"), int(payload.get("pages", 100))
    delay = float(payload.get("delay", 0.1))
    state = ctx.last_checkpoint or {"page": 0, "digest": ""}
    if state["page"]:
        ctx.log(f"pid {os.getpid()}: resuming at page {state['page']} of {pages}")
    resumed_from = state["page"]
    ctx.step("fetch")
    for page in range(state["page"], pages):
        time.sleep(delay)  # the request
        digest = hashlib.sha256((state["digest"] + fetch(site, page)).encode()).hexdigest()
        state = {"page": page + 1, "digest": digest}
        # Durable when it returns: a crash after this line never fetches the page again.
        # Also a pause point: a pause waits here, a stop raises Stopped.
        ctx.checkpoint(state)
        ctx.progress((page + 1) / pages, f"page {page + 1} of {pages}")
    return {"site": site, "pages": pages, "digest": state["digest"], "resumed_from": resumed_from}


def submit(pages: int) -> None:
    with Client(URL, token=TOKEN) as baton:
        job = baton.submit("scrape", {"site": "example.org", "pages": pages}, max_recoveries=10)
        print(job.id, flush=True)
        done = baton.wait(job.id)
        print(done.state, done.result if done.state == "completed" else done.error)


if __name__ == "__main__":
    if sys.argv[1:2] == ["submit"]:
        submit(int(sys.argv[2]) if len(sys.argv) > 2 else 100)
    else:
        print(f"scraper worker, pid {os.getpid()}, serving {URL}", flush=True)
        worker.run()
