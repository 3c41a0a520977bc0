"""The supervisord config written from the settings, read back by supervisor's own parser; the
restart history read from supervisord's log."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import pytest
from supervisor.options import ServerOptions

from iotpipe.localstack.supervisor import (
    PROGRAMS,
    Supervisor,
    SupervisorError,
    render_config,
)


def test_supervisord_reads_back_the_commands_and_settings_unchanged(tmp_path: Path) -> None:
    commands = {"broker": ["java", "-cp", "/opt/a b/libs/*", "kafka.Kafka", "50%.properties"],
                "query": ["/venv/bin/python", "-m", "iotpipe.query"],
                "sensors": ["/venv/bin/python", "-m", "iotpipe.sensors"]}
    env = {"IOTPIPE_SENSORS": "a,b", "IOTPIPE_TOPIC_PREFIX": "%(here)s", "IOTPIPE_X": "it's a=b",
           "IOTPIPE_Y": "a;b#c"}  # (a comment only after a space)
    conf = tmp_path / "supervisord.conf"
    # a query service whose deadlines let its requests run longer waits longer to be killed
    conf.write_text(render_config(tmp_path, commands, env, tmp_path, {"query": 3615}))
    options = ServerOptions()
    options.realize(args=["-c", str(conf)])
    programs = {pc.name: pc for g in options.process_group_configs for pc in g.process_configs}
    assert set(programs) == set(commands)
    for name, argv in commands.items():
        pc = programs[name]
        assert shlex.split(pc.command) == argv
        assert pc.environment == env
        assert pc.priority == PROGRAMS[name].priority
        assert pc.stopwaitsecs == (3615 if name == "query" else PROGRAMS[name].stop_wait_s)
        assert pc.autorestart is not False and pc.killasgroup
        assert pc.stdout_logfile == str(tmp_path / f"{name}.log")
    # the broker starts first and stops last; the sensors stop first (they flush)
    assert sorted(programs, key=lambda n: programs[n].priority) == ["broker", "query", "sensors"]
    assert options.serverurl == Supervisor(tmp_path).url
    assert Supervisor(tmp_path).running_config() == env


def test_values_it_cannot_pass_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(SupervisorError, match="IOTPIPE_X: a value with a double quote"):
        render_config(tmp_path, {}, {"IOTPIPE_X": 'say "hi"'}, tmp_path)
    with pytest.raises(SupervisorError, match="too long for a unix socket"):
        render_config(tmp_path / ("d" * 120), {}, {}, tmp_path)
    # supervisord's reader would cut these at a comment or a line break, or strip the space
    for env, run_dir in [({"IOTPIPE_X": "a ;b"}, tmp_path), ({"IOTPIPE_X": "a\tb #c"}, tmp_path),
                         ({}, tmp_path / "x\n[program:evil]"), ({}, tmp_path / "y ;z")]:
        with pytest.raises(SupervisorError, match="cannot be written to supervisord's config"):
            render_config(run_dir, {}, env, tmp_path)
    with pytest.raises(SupervisorError, match="cannot be written to supervisord's config"):
        render_config(tmp_path, {}, {}, tmp_path / "ends in a space ")  # (`directory=`)


def test_restarts_and_last_exit_count_from_the_latest_supervisord_start(tmp_path: Path) -> None:
    lines = [
        "INFO supervisord started with pid 10", "INFO spawned: 'broker' with pid 11",
        "WARN exited: broker (terminated by SIGKILL; not expected)",
        "INFO spawned: 'broker' with pid 12",
        "INFO supervisord started with pid 20", "INFO spawned: 'broker' with pid 21",
        "INFO spawned: 'sensors' with pid 22",
        "WARN exited: sensors (exit status 1; not expected)",
        "INFO spawned: 'sensors' with pid 23",
        "WARN exited: sensors (exit status 1; not expected)",
        "INFO spawned: 'sensors' with pid 24",
        "WARN exited: sensors (terminated by SIGKILL; not expected)",
        "INFO gave up: sensors entered FATAL state, too many start retries too quickly"]
    (tmp_path / "supervisord.log").write_text(
        "".join(f"2026-01-01 00:00:0{i % 10},000 {line}\n" for i, line in enumerate(lines)))
    assert Supervisor(tmp_path).history() == {
        "broker": (0, ""), "sensors": (2, "terminated by SIGKILL; not expected")}
    assert Supervisor(tmp_path / "nowhere").history() == {}


def test_leftovers_are_only_this_checkouts(tmp_path: Path) -> None:
    """A supervisord left behind is found by its whole config path: that of another checkout
    whose path ends the same way is not this stack's to stop."""
    import subprocess
    import sys

    mine = Supervisor(tmp_path / "work" / "main" / ".data" / "run")
    other = tmp_path / "home" / str(tmp_path / "work" / "main" / ".data" / "run").lstrip("/")
    procs = [subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)",
                               "supervisor.supervisord", "-c", str(conf)])
             for conf in (other / "supervisord.conf", mine.conf)]
    try:
        deadline = time.monotonic() + 10
        while (found := mine.leftovers()) == {} and time.monotonic() < deadline:
            time.sleep(0.05)  # (until the children's command lines are in /proc)
        assert found == {"supervisord": [procs[1].pid]}
    finally:
        for p in procs:
            p.kill()
            p.wait()
