"""A real single-node Apache Kafka 4 broker (KRaft, broker + controller) run from Maven jars.

The test suite starts the broker through this class, and the local stack's supervisor runs its
`command()`: the jars come from Maven Central (`local/maven/kafka/pom.xml`), the storage is
formatted on first start, everything binds to 127.0.0.1.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from confluent_kafka import KafkaException
from confluent_kafka.admin import AdminClient

from iotpipe.core.settings import unwritable
from iotpipe.localstack.maven import PROJECT_ROOT, kafka_libs
from iotpipe.localstack.processes import stop_process

LOG4J = PROJECT_ROOT / "local" / "kafka" / "log4j2.properties"


class BrokerError(RuntimeError):
    """The broker could not be prepared or started; the message says why."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _check_writable(folder: Path) -> None:
    if (why := unwritable(folder)) is not None:
        raise BrokerError(f"the broker data folder {folder} is not writable: {why}")


class KafkaBroker:
    """One broker process; `start` returns once it answers metadata requests."""

    def __init__(self, data_dir: Path | str, port: int = 9092, heap: str = "512m",
                 log_file: Path | None = None) -> None:
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.heap = heap
        self.log_file = log_file or self.data_dir / "broker.log"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _write_config(self, controller_port: int) -> Path:
        log_dirs = self.data_dir / "kraft-logs"
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},"
                         f"CONTROLLER://127.0.0.1:{controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "log.dirs": str(log_dirs),
            "auto.create.topics.enable": "false",
            "offsets.topic.replication.factor": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "log.flush.interval.ms": "1000",
        }
        path = self.data_dir / "server.properties"
        path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return path

    def _java(self, *args: str) -> list[str]:
        return ["java", f"-Xmx{self.heap}", "-Xms128m", "-XX:+UseG1GC", "-Djava.awt.headless=true",
                f"-Dlog4j2.configurationFile={LOG4J}", f"-Dkafka.logs.dir={self.data_dir}",
                "-cp", f"{kafka_libs()}/*", *args]

    def _format(self, config: Path) -> None:
        if (self.data_dir / "kraft-logs" / "meta.properties").exists():
            return
        cluster_id = uuid.uuid4().hex[:22]
        done = subprocess.run(self._java("kafka.tools.StorageTool", "format", "-t", cluster_id,
                                         "-c", str(config)),
                              capture_output=True, text=True, timeout=120, check=False)
        if done.returncode != 0:
            raise BrokerError(f"formatting the storage failed:\n{done.stdout}{done.stderr}")

    def command(self) -> list[str]:
        """Check the folder and java, write the config, format the storage on first use: the
        broker's command line, for this class or a process supervisor to run."""
        _check_writable(self.data_dir)
        if shutil.which("java") is None:
            raise BrokerError("java (JDK 17+) is needed to run the Kafka broker")
        config = self._write_config(free_port())
        self._format(config)
        return self._java("kafka.Kafka", str(config))

    def start(self, timeout_s: float = 90.0) -> KafkaBroker:
        argv = self.command()
        with open(self.log_file, "ab") as out:
            self.process = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        try:
            self.wait_ready(timeout_s, self._exited)
        except BrokerError:
            self.stop()
            raise
        return self

    def _exited(self) -> str | None:
        if self.process is not None and self.process.poll() is not None:
            return f"the broker exited with {self.process.returncode}"
        return None

    def wait_ready(self, timeout_s: float, failed: Callable[[], str | None]) -> None:
        """Poll until the broker answers metadata requests; stop early once `failed` says why."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            why = failed()
            if why:
                raise BrokerError(f"{why}; last log lines:\n{self.log_tail()}")
            try:
                if admin.list_topics(timeout=1).brokers:
                    return
            except KafkaException:
                pass
            time.sleep(0.2)
        raise BrokerError(f"the broker did not answer within {timeout_s:g}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no broker log)"

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGTERM (a clean shutdown), then SIGKILL if it takes longer than timeout_s."""
        proc, self.process = self.process, None
        if proc is not None:
            stop_process(proc, timeout_s)

    def kill(self) -> None:
        """SIGKILL, as a crash would (fault tests)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait(10)
            self.process = None
