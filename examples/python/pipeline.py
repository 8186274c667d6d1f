"""Three jobs with dependencies, submitted through the Client as a workflow, and a
worker in the same process that serves them: `fetch` and `rates` run first (at once),
then `report` reads their results with `ctx.parent_results()`.

Against a local server (`cargo run --release -- serve` in the repository):

    pip install ./sdk/python
    python examples/python/pipeline.py

BATON_URL (default http://127.0.0.1:7700) and BATON_TOKEN say where the server is.
"""

from __future__ import annotations

import asyncio
import os
import threading
from typing import Any, Dict, List

from baton_client import Client, Context, SyncContext, Worker, job_spec

URL = os.environ.get("BATON_URL", "http://127.0.0.1:7700")
TOKEN = os.environ.get("BATON_TOKEN")

worker = Worker(URL, token=TOKEN, concurrency=4, name="pipeline-example")


@worker.handler("fetch-orders")
def fetch_orders(ctx: SyncContext, payload: Dict[str, Any]) -> List[Dict[str, Any]]:
    ctx.step("download")
    orders = [{"id": i, "amount": 10.0 * i, "currency": "EUR" if i % 2 else "USD"} for i in range(1, 6)]
    ctx.progress(1.0, f"{len(orders)} orders")
    return orders


@worker.handler("fetch-rates")
async def fetch_rates(ctx: Context, payload: Dict[str, Any]) -> Dict[str, float]:
    await asyncio.sleep(0.1)  # an async handler runs on the worker's loop
    return {"EUR": 1.0, "USD": 0.9}


@worker.handler("report")
def report(ctx: SyncContext, payload: Dict[str, Any]) -> Dict[str, Any]:
    parents = ctx.parent_results()  # by the names the workflow gave its jobs
    orders, rates = parents["orders"], parents["rates"]
    total = sum(o["amount"] * rates[o["currency"]] for o in orders)
    ctx.log(f"{len(orders)} orders, total {total:.2f} {payload['currency']}")
    return {"orders": len(orders), "total": round(total, 2), "currency": payload["currency"]}


def main() -> None:
    # The worker runs on a thread of its own here; `worker.run()` in a process of its
    # own (or `python -m baton_client worker pipeline:worker`) is the usual way.
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    if not worker.wait_connected(30):
        raise SystemExit(f"the worker could not connect to {URL}")
    try:
        with Client(URL, token=TOKEN) as baton:
            flow = baton.submit_workflow(
                {
                    "orders": job_spec("fetch-orders"),
                    "rates": job_spec("fetch-rates"),
                    "report": job_spec("report", {"currency": "EUR"}, depends_on=["orders", "rates"]),
                }
            )
            print(f"workflow {flow.id}")
            done = baton.wait(flow.jobs["report"], timeout=60)
            for node in baton.get_workflow(flow.id).nodes:
                print(f"  {node.name}: {node.state}")
            print(f"report: {done.state} {done.result}")
            if done.state != "completed":
                raise SystemExit(1)
    finally:
        worker.shutdown()
        thread.join(30)


if __name__ == "__main__":
    main()
