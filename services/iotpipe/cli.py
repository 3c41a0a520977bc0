"""`iotpipe <command>`: one console script for every service and the local stack."""

from __future__ import annotations

import argparse
import logging
import runpy
import subprocess
import sys
import xmlrpc.client

from confluent_kafka import KafkaException

from iotpipe.core.settings import Settings, SettingsError
from iotpipe.localstack.stack import LocalStack, StackError
from iotpipe.localstack.status import StatusBoard
from iotpipe.localstack.topics import ensure_topics

STATUS_DOWN = 3  # `iotpipe status` when a component is not running (as LSB init scripts say)
SERVICES = {"sensors": "iotpipe.sensors", "query": "iotpipe.query", "stream": "iotpipe.stream"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="iotpipe", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name in SERVICES:
        sub.add_parser(name, help=f"run the {name} service (python -m {SERVICES[name]})")
    sub.add_parser("run", help="the whole pipeline in the foreground; Ctrl-C stops it")
    sub.add_parser("up", help="the whole pipeline detached and supervised; starts what is not "
                   "running, returns once the API is healthy")
    sub.add_parser("down", help="stop what `up` started")
    sub.add_parser("status", help="each component's state, then the live table; exit status "
                   f"{STATUS_DOWN} when one is not running")
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
    except (StackError, TimeoutError, RuntimeError, OSError, xmlrpc.client.Error,
            KafkaException, subprocess.SubprocessError) as e:
        sys.exit(f"iotpipe {args.command}: {e}")


def _dispatch(command: str, stack: LocalStack, settings: Settings) -> None:
    api = f"http://{settings.query_host}:{settings.query_port}"
    if command == "run":
        stack.run_foreground()
    elif command == "up":
        started = stack.up()
        print(f"iotpipe is up: started {', '.join(started)}" if started else
              "iotpipe is already running: nothing to start", end="")
        print(f"; API {api}; logs in {stack.run_dir}; `make status` tells, `make down` stops it")
    elif command == "down":
        stopped = stack.down()
        print(f"stopped: {', '.join(stopped)}" if stopped else "nothing was running")
    elif command == "status":
        lines, healthy = stack.status()
        print("\n".join(lines + StatusBoard(settings).rows()))
        if not healthy:
            sys.exit(STATUS_DOWN)
    elif command == "topics":
        print("created:", ", ".join(ensure_topics(settings)) or "none (all exist)")
