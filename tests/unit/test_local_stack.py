"""The local stack's checks before it starts anything: each a clear line, not a traceback or
a component that keeps exiting."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from iotpipe.core.settings import Settings
from iotpipe.localstack import stack as stack_module
from iotpipe.localstack.kafka_broker import free_port
from iotpipe.localstack.stack import STOP_SIGNALS, LocalStack, StackError


def _stack(tmp_path: Path, **env: str) -> LocalStack:
    ports = {f"IOTPIPE_{k}": str(free_port()) for k in (
        "QUERY_PORT", "QUERY_METRICS_PORT", "SENSORS_METRICS_PORT", "STREAM_METRICS_PORT")}
    return LocalStack(Settings.from_env(ports | {
        "IOTPIPE_DATA_DIR": str(tmp_path), "IOTPIPE_KAFKA_BOOTSTRAP": f"127.0.0.1:{free_port()}",
    } | {f"IOTPIPE_{k}": v for k, v in env.items()}))


def test_a_bootstrap_with_its_protocol_is_the_local_broker(tmp_path: Path) -> None:
    port = free_port()
    assert _stack(tmp_path, KAFKA_BOOTSTRAP=f"PLAINTEXT://127.0.0.1:{port}").broker.port == port


def test_settings_the_local_broker_cannot_serve_are_refused(tmp_path: Path) -> None:
    (tmp_path / "pw").write_text("secret")
    with pytest.raises(StackError, match="takes PLAINTEXT clients only"):
        _ = _stack(tmp_path, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT",
                   KAFKA_SASL_MECHANISM="PLAIN", KAFKA_SASL_USERNAME="u",
                   KAFKA_SASL_PASSWORD_FILE=str(tmp_path / "pw")).broker


def test_one_port_for_two_components_is_refused(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The sensors' metrics on the API's port: the component started second would keep
    exiting, its log blaming the other."""
    stack = _stack(tmp_path)
    stack = _stack(tmp_path, SENSORS_METRICS_PORT=str(stack.settings.query_port),
                   QUERY_PORT=str(stack.settings.query_port))

    def launch(config: str) -> None:
        raise AssertionError("a supervisor was started")

    monkeypatch.setattr(stack.supervisor, "launch", launch)
    with pytest.raises(StackError, match=f"port {stack.settings.query_port} is set for both "
                                         "the query API and the sensors' metrics"):
        stack.up()


def test_status_while_another_command_changes_the_stack_says_so(tmp_path: Path) -> None:
    """A supervisor shutting down answers as none: `make status` during `make down` told of
    processes "left behind by a killed supervisor"."""
    import fcntl

    stack = _stack(tmp_path)
    stack.run_dir.mkdir(parents=True)
    with open(stack.run_dir / "stack.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)  # as `down` holds it
        lines, healthy = stack.status()
    assert not healthy and lines == [
        f"iotpipe is being started or stopped in {stack.data} by another `iotpipe up/run/down`"]
    assert stack.status()[0][0].startswith("iotpipe is not running")


def test_status_looking_at_the_lock_neither_creates_it_nor_keeps_up_out(tmp_path: Path) -> None:
    import fcntl
    import threading

    stack = _stack(tmp_path)
    assert stack.status()[0][0].startswith("iotpipe is not running")
    assert not stack.run_dir.exists()
    stack.run_dir.mkdir(parents=True)
    with open(stack.run_dir / "stack.lock", "w") as looking:  # as `make status` looks
        fcntl.flock(looking, fcntl.LOCK_SH | fcntl.LOCK_NB)
        threading.Timer(0.3, looking.close).start()
        with stack._changing():  # an `up` at that moment waits for the look to end
            pass


def test_a_stop_signal_landing_as_up_fails_still_stops_the_stack(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`run` stops what `up` started even when the first Ctrl-C (or SIGTERM) arrives just as
    `up` fails, before the stop signals are ignored."""
    stack, stopped = _stack(tmp_path), []

    def failing_up() -> None:
        raise StackError("the broker did not start")

    monkeypatch.setattr(stack, "up", failing_up)
    monkeypatch.setattr(stack, "down", lambda: stopped.append(True))
    ignore = stack_module._ignore_stop_signals

    def signal_lands_here() -> None:
        monkeypatch.setattr(stack_module, "_ignore_stop_signals", ignore)
        stack_module._stop_once(signal.SIGTERM, None)

    monkeypatch.setattr(stack_module, "_ignore_stop_signals", signal_lands_here)
    handlers = {sig: signal.getsignal(sig) for sig in STOP_SIGNALS}
    try:
        stack.run_foreground()
    except StackError:
        outcome = "up's error"
    except KeyboardInterrupt:  # (the code before: out of run, the stack left running)
        outcome = "interrupted"
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
    assert (outcome, stopped) == ("up's error", [True])
