"""`python -m baton_client worker module:attr`: runs the `Worker` that `module.attr`
names until SIGTERM or SIGINT.

    python -m baton_client worker myjobs:worker --url http://127.0.0.1:7700 --concurrency 8

The module is imported from the current folder (or the path); `--url`, `--token`
(or BATON_TOKEN), `--ca` (or BATON_CA), `--concurrency`, `--queue` and `--name`
override the Worker's own.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from typing import List, Optional

from ._protocol import WorkerError
from ._tls import tls_context
from .worker import Worker


def load(target: str) -> Worker:
    module_name, _, attr = target.partition(":")
    if not module_name or not attr:
        raise SystemExit(f"error: {target!r} is not module:attr (for example myjobs:worker)")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        obj: object = importlib.import_module(module_name)
    except ImportError as e:
        raise SystemExit(f"error: cannot import {module_name!r}: {e}") from None
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise SystemExit(f"error: {module_name!r} has no {attr!r}") from None
    if not isinstance(obj, Worker):
        raise SystemExit(f"error: {target} is a {type(obj).__name__}, not a baton_client.Worker")
    return obj


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m baton_client", description="Baton's Python client.")
    commands = parser.add_subparsers(dest="command", required=True)
    w = commands.add_parser("worker", help="serve jobs with the handlers of a Worker")
    w.add_argument("target", help="module:attr naming a baton_client.Worker")
    w.add_argument("--url", help="the server (http://host:port or unix:///path); default the Worker's")
    w.add_argument("--token", default=os.environ.get("BATON_TOKEN"), help="an operator token (or BATON_TOKEN)")
    w.add_argument(
        "--ca",
        default=os.environ.get("BATON_CA") or None,
        help="for an https:// server: the certificate(s) to trust instead of the system's (PEM; or BATON_CA)",
    )
    w.add_argument("--concurrency", type=int, help="jobs at once")
    w.add_argument("--queue", action="append", dest="queues", help="a queue to take jobs from (repeatable)")
    w.add_argument("--name", help="the worker's name, as GET /api/workers shows it")
    w.add_argument("--log-level", default=os.environ.get("BATON_LOG", "info"), help="debug, info, warning")
    args = parser.parse_args(argv)

    logging.basicConfig(
        level=getattr(logging, str(args.log_level).upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    worker = load(args.target)
    if args.url:
        worker.url = args.url.rstrip("/")
    if args.token:
        worker.token = args.token
    if args.ca:
        try:
            tls_context(args.ca)
        except ValueError as e:
            parser.error(f"--ca: {e}")
        worker.ca = args.ca
    if args.concurrency is not None:
        if args.concurrency < 1:
            parser.error("--concurrency must be at least 1")
        worker.concurrency = args.concurrency
    if args.queues:
        worker.queues = list(args.queues)
    if args.name:
        worker.name = args.name
    try:
        worker.run()
    except WorkerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
