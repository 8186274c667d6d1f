"""The examples in examples/python, run as a user runs them against a server:
the scraper survives `kill -9` of its worker, the progress printer follows it, and
the pipeline's last job reads its parents' results."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Dict, List

from baton_client import Client

from conftest import REPO, Server, wait_for

EXAMPLES = REPO / "examples" / "python"


def run(script: str, server: Server, log: Path, *args: str) -> "subprocess.Popen[bytes]":
    env: Dict[str, str] = {**os.environ, "BATON_URL": server.url}
    env.pop("BATON_TOKEN", None)
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, str(EXAMPLES / script), *args], env=env, stdout=out, stderr=subprocess.STDOUT
        )


def test_the_scraper_resumes_after_kill_9_and_the_progress_printer_follows_it(
    own_server: Server, tmp_path: Path
) -> None:
    procs: List["subprocess.Popen[bytes]"] = []
    try:
        with Client(own_server.url) as baton:
            first = run("scraper.py", own_server, tmp_path / "first.log")
            procs.append(first)
            wait_for("the scraper connecting", lambda: len(baton.workers()) == 1)
            job = baton.submit("scrape", {"site": "example.org", "pages": 30, "delay": 0.05}, max_recoveries=5)
            printer = run("progress.py", own_server, tmp_path / "progress.log", job.id)
            procs.append(printer)
            with baton.events(job=job.id) as events:
                for event in events:
                    if event.type == "job.checkpoint" and event.data["checkpoint"]["page"] >= 5:
                        break
            first.send_signal(signal.SIGKILL)
            first.wait(30)
            wait_for("the recovery", lambda: baton.get(job.id).state == "queued")

            second = run("scraper.py", own_server, tmp_path / "second.log")
            procs.append(second)
            done = baton.wait(job.id, timeout=60)
            assert done.state == "completed", done.error
            assert done.result["resumed_from"] >= 5 and done.result["pages"] == 30
            # The same digest as a run that was never interrupted: no page lost or
            # fetched twice into the state.
            digest = ""
            for page in range(30):
                content = hashlib.sha256(f"example.org/{page}".encode()).hexdigest()
                digest = hashlib.sha256((digest + content).encode()).hexdigest()
            assert done.result["digest"] == digest
            logs = baton.job_events(job.id)
            assert any("resuming at page" in str(e.data) for e in logs if e.type == "job.log")

            assert printer.wait(30) == 0
            printed = (tmp_path / "progress.log").read_text()
            assert "crashed" in printed and "recovered" in printed
            assert "100.0% page 30 of 30" in printed and printed.rstrip().endswith("completed")
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(30)


def test_the_pipeline_runs_three_jobs_and_the_last_reads_its_parents(own_server: Server, tmp_path: Path) -> None:
    log = tmp_path / "pipeline.log"
    proc = run("pipeline.py", own_server, log)
    assert proc.wait(60) == 0, log.read_text()
    out = log.read_text()
    assert "orders: completed" in out and "rates: completed" in out
    assert "report: completed {'currency': 'EUR', 'orders': 5, 'total': 144.0}" in out, out
