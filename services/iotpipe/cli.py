"""`iotpipe <command>`: one console script for every service and the local stack."""

from __future__ import annotations

import argparse
import logging
import runpy
import sys

from iotpipe.core.settings import Settings, SettingsError
from iotpipe.localstack.stack import LocalStack, StackError
from iotpipe.localstack.status import StatusBoard
from iotpipe.localstack.topics import ensure_topics

SERVICES = {"sensors": "iotpipe.sensors", "query": "iotpipe.query", "stream": "iotpipe.stream"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="iotpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service (python -m {SERVICES[name]})")
    sub.add_parser("run", help="the whole pipeline in the foreground; Ctrl-C stops it")
    sub.add_parser("up", help="the whole pipeline detached; returns once the API is healthy")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="one status table of the running stack")
    sub.add_parser("topics", help="create the sensor topics on the configured broker")
    args = parser.parse_args(argv)

    if args.command in SERVICES:
        sys.argv = [SERVICES[args.command]]
        runpy.run_module(SERVICES[args.command], run_name="__main__", alter_sys=True)
        return
    try:
        settings = Settings.from_env()
    except SettingsError as e:
        sys.exit(f"iotpipe: {e}")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    stack = LocalStack(settings)
    try:
        _dispatch(args.command, stack, settings)
    except (StackError, TimeoutError, RuntimeError) as e:
        sys.exit(f"iotpipe {args.command}: {e}")


def _dispatch(command: str, stack: LocalStack, settings: Settings) -> None:
    if command == "run":
        stack.run_foreground()
    elif command == "up":
        stack.start(detach=True)
        print(f"iotpipe is up: API http://{settings.query_host}:{settings.query_port}; "
              f"logs in {stack.run_dir}; `make down` stops it")
    elif command == "down":
        stopped = stack.stop()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    elif command == "status":
        print("\n".join(StatusBoard(settings, {}).rows()))
    elif command == "topics":
        print("created:", ", ".join(ensure_topics(settings)) or "none (all exist)")
