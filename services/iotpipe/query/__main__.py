"""`python -m iotpipe.query`: the query service under gunicorn (the container's command too)."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile

from iotpipe.core.settings import Settings, SettingsError
from iotpipe.query.app import read_token


def main() -> None:
    try:  # fail fast with one clear line, before gunicorn starts (its workers would
        # log a traceback each)
        settings = Settings.from_env()
        settings.kafka.check_files()
        read_token(settings)
    except SettingsError as e:
        sys.exit(f"iotpipe query: {e}")
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        path = os.path.join(tempfile.gettempdir(), f"iotpipe-query-metrics-{os.getpid()}")
        shutil.rmtree(path, ignore_errors=True)
        os.makedirs(path)
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    # librdkafka's threads would each get a glibc arena: memory that never goes back
    os.environ.setdefault("MALLOC_ARENA_MAX", "2")
    argv = [sys.executable, "-m", "gunicorn", "-c", "python:iotpipe.query.gunicorn_conf",
            "iotpipe.query.front:create_front()"]
    os.execv(sys.executable, argv)


if __name__ == "__main__":
    main()
