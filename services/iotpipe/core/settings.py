"""Every setting of every service, read from the environment once and validated once.

One module owns the names so that the README table, the Helm chart and the code cannot drift:
`ENV_VARS` lists each variable with its default and meaning (the README table is checked
against it by a test).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SASL_MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
SENSOR_NAME = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._-]{0,99}$")


class SettingsError(ValueError):
    """A setting has a value the services cannot run with; the message names the variable."""


@dataclass(frozen=True)
class EnvVar:
    name: str
    default: str
    help: str


def _vars(*rows: tuple[str, str, str]) -> dict[str, EnvVar]:
    return {name: EnvVar(name, default, help_) for name, default, help_ in rows}


# read by the build and check tools (docker/images.py, k8s/crd_files.py), not the services;
# they may be set for `make test` or `make images`, whose services inherit the environment
TOOL_VARS = frozenset({"IOTPIPE_DOCKER_CACHE", "IOTPIPE_CRD_DIR", "IOTPIPE_CRD_MIRROR"})

ENV_VARS: dict[str, EnvVar] = _vars(
    # Kafka connection, shared by every client (confluent-kafka and Spark's Kafka source)
    ("IOTPIPE_KAFKA_BOOTSTRAP", "127.0.0.1:9092", "Kafka bootstrap servers (host:port,...)"),
    ("IOTPIPE_KAFKA_SECURITY_PROTOCOL", "PLAINTEXT", "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    ("IOTPIPE_KAFKA_SASL_MECHANISM", "", "SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    ("IOTPIPE_KAFKA_SASL_USERNAME", "", "SASL user name"),
    ("IOTPIPE_KAFKA_SASL_PASSWORD_FILE", "", "file holding the SASL password (mounted Secret)"),
    ("IOTPIPE_KAFKA_SSL_CA_FILE", "", "PEM file of the CA that signed the broker certificates"),
    ("IOTPIPE_KAFKA_SSL_CERT_FILE", "", "PEM client certificate (mutual TLS)"),
    ("IOTPIPE_KAFKA_SSL_KEY_FILE", "", "PEM client key (mutual TLS)"),
    ("IOTPIPE_KAFKA_TIMEOUT_SECONDS", "5", "timeout of every single broker call"),
    # Topics
    ("IOTPIPE_SENSORS", "temperature,humidity,pressure", "sensor types; one topic each"),
    ("IOTPIPE_TOPIC_PREFIX", "", "prefix of every topic name (topic = prefix + sensor)"),
    ("IOTPIPE_TOPIC_PARTITIONS", "3", "partitions of each topic the project creates"),
    ("IOTPIPE_TOPIC_RETENTION_MS", "604800000", "retention of each topic (ms); -1 keeps all"),
    ("IOTPIPE_ALLOWED_LATENESS_SECONDS", "30",
     "how late a reading may reach its topic and still count: the stream watermark and the "
     "query service's read-ahead past `to`; also how far its ts may pass its message's "
     "timestamp"),
    # Rollups (built by the streaming app, read by the query service)
    ("IOTPIPE_ROLLUP_SECONDS", "60", "length of the event-time buckets the stream rolls up"),
    ("IOTPIPE_ROLLUP_RETENTION_MS", "31536000000",
     "retention of the rollup topic (ms; it outlives the readings); -1 keeps all"),
    # Query service
    ("IOTPIPE_QUERY_HOST", "127.0.0.1", "address the query service binds"),
    ("IOTPIPE_QUERY_PORT", "5000", "port of the query service"),
    ("IOTPIPE_QUERY_WORKERS", "2", "gunicorn worker processes"),
    ("IOTPIPE_QUERY_THREADS", "8", "threads per gunicorn worker that run requests once read whole"),
    ("IOTPIPE_QUERY_READERS", "2",
     "reader processes per worker that scan partitions in parallel (0: scan in the worker)"),
    ("IOTPIPE_QUERY_DEADLINE_SECONDS", "20",
     "a request not answered this long after its body was read gets 504"),
    ("IOTPIPE_QUERY_READ_DEADLINE_SECONDS", "10",
     "a client must send a request's headers within this of connecting, and its whole body "
     "within this of its headers, else 408 and the connection is closed (each connection is "
     "given up to a fifth more, drawn at random)"),
    ("IOTPIPE_QUERY_MAX_CONNECTIONS", "1000",
     "open connections per worker; past it a new connection gets 503 at once"),
    ("IOTPIPE_QUERY_CACHE_MESSAGES", "250000",
     "decoded messages each worker keeps to answer repeated and sliding small windows from "
     "memory (0: off)"),
    ("IOTPIPE_QUERY_CACHE_SECONDS", "300",
     "age after which kept messages are read again (how soon retention or a deleted topic "
     "shows)"),
    ("IOTPIPE_QUERY_ROLLUPS", "true",
     "answer the whole buckets inside a window from the rollup topic (false: scan readings)"),
    ("IOTPIPE_MAX_WINDOW_SECONDS", "2678400", "longest window a request may ask for"),
    ("IOTPIPE_MAX_BODY_BYTES", "65536", "largest request body accepted"),
    ("IOTPIPE_API_TOKEN_FILE", "", "file holding a bearer token (16 characters or more, "
     "printable ASCII without spaces); when set, the API requires it"),
    ("IOTPIPE_LOG_FORMAT", "text", "text or json"),
    ("IOTPIPE_LOG_LEVEL", "INFO", "DEBUG, INFO, WARNING or ERROR"),
    # Sensor simulator
    ("IOTPIPE_DEVICES_PER_SENSOR", "1", "simulated devices per sensor type (each sends once a "
     "round, every round in a new random order)"),
    ("IOTPIPE_SENSOR_RATE_HZ", "1", "readings per second of each device"),
    ("IOTPIPE_VALUE_MODEL", "uniform", "uniform (integers 0..100) or daily (cycle + noise)"),
    ("IOTPIPE_DUPLICATE_RATE", "0", "fraction of readings sent twice (testing)"),
    ("IOTPIPE_LATE_RATE", "0", "fraction of readings held back and sent late (testing)"),
    ("IOTPIPE_LATE_DELAY_SECONDS", "60", "how long late readings are held back"),
    ("IOTPIPE_PRODUCER_BUFFER_SECONDS", "300",
     "how long the producer keeps retrying a reading while the broker is down"),
    # Metrics endpoints
    ("IOTPIPE_METRICS_HOST", "127.0.0.1", "bind address of the sensor, stream and query metrics"),
    ("IOTPIPE_SENSORS_METRICS_PORT", "9109", "Prometheus port of the sensor simulator"),
    ("IOTPIPE_STREAM_METRICS_PORT", "9108", "Prometheus port of the streaming app"),
    ("IOTPIPE_QUERY_METRICS_PORT", "9110",
     "Prometheus port of the query service (its own: no API token, not behind the Ingress)"),
    # Streaming app
    ("IOTPIPE_SPARK_MASTER", "local[2]", "Spark master (ignored when spark-submit sets one)"),
    ("IOTPIPE_CHECKPOINT_DIR", ".data/checkpoints", "streaming checkpoint location"),
    ("IOTPIPE_WINDOW_SECONDS", "60", "length of the event-time tumbling windows"),
    ("IOTPIPE_TRIGGER_SECONDS", "1", "micro-batch interval"),
    ("IOTPIPE_STREAM_CONSOLE", "true", "print the live table on every batch"),
    ("IOTPIPE_SPARK_JARS", "", "comma-separated Kafka connector jars (set by the launcher)"),
    # Local stack
    ("IOTPIPE_DATA_DIR", ".data", "where the local broker keeps its log and state"),
    ("IOTPIPE_KAFKA_HEAP", "512m",
     "heap of the local broker JVM (a JVM size of at least `128m`, e.g. `1g`)"),
)


def _read(env: Mapping[str, str], name: str) -> str:
    return env.get(name, ENV_VARS[name].default).strip()


def _number(env: Mapping[str, str], name: str, kind: Callable[[str], Any], lo: float,
            hi: float) -> Any:
    raw = _read(env, name)
    try:
        value = kind(raw)
    except ValueError:
        raise SettingsError(f"{name}={raw!r} is not a valid {kind.__name__}") from None
    if not lo <= value <= hi:
        raise SettingsError(f"{name}={raw!r} must be between {lo} and {hi}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    raw = _read(env, name)
    if raw not in choices:
        raise SettingsError(f"{name}={raw!r} must be one of {', '.join(choices)}")
    return raw


def _flag(env: Mapping[str, str], name: str) -> bool:
    raw = _read(env, name).lower()
    if raw in ("1", "true", "yes", "on"):
        return True
    if raw in ("0", "false", "no", "off", ""):
        return False
    raise SettingsError(f"{name}={raw!r} must be true or false")


def _port(env: Mapping[str, str], name: str) -> int:
    return _number(env, name, int, 0, 65535)


# a bootstrap server as librdkafka takes it: [protocol://]host[:port] (9092 when omitted),
# the host a name, an IPv4 address or a bracketed IPv6 one
_SERVER = re.compile(r"^(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[^\s,:/\[\]]+)(?::(\d{1,5}))?$")
_HEAP = re.compile(r"^(\d{1,7})([kKmMgG])$")
_HEAP_MIB = {"k": 1 / 1024, "m": 1, "g": 1024}


def _bootstrap(env: Mapping[str, str]) -> str:
    raw = _read(env, "IOTPIPE_KAFKA_BOOTSTRAP") or "127.0.0.1:9092"
    for server in raw.split(","):
        m = _SERVER.match(server.strip())
        if m is None or (m.group(1) is not None and not 1 <= int(m.group(1)) <= 65535):
            raise SettingsError(f"IOTPIPE_KAFKA_BOOTSTRAP={raw!r}: each server must be "
                                "host:port (port 1 to 65535), comma-separated")
    return raw


def _heap(env: Mapping[str, str]) -> str:
    """A JVM heap size of at least the broker's start size (-Xms128m), e.g. 512m or 1g."""
    raw = _read(env, "IOTPIPE_KAFKA_HEAP")
    m = _HEAP.match(raw)
    if m is None or int(m.group(1)) * _HEAP_MIB[m.group(2).lower()] < 128:
        raise SettingsError(f"IOTPIPE_KAFKA_HEAP={raw!r} must be a JVM size of at least "
                            "128m, e.g. 512m or 1g")
    return raw


def _sensors(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = _read(env, "IOTPIPE_SENSORS")
    names = tuple(s.strip() for s in raw.split(",") if s.strip())
    if not names:
        raise SettingsError("IOTPIPE_SENSORS must name at least one sensor type")
    bad = [n for n in names if not SENSOR_NAME.match(n) or n in ("from", "to", "rollups")]
    if bad:
        raise SettingsError(f"IOTPIPE_SENSORS has invalid sensor names: {', '.join(bad)}")
    if len(set(names)) != len(names):
        raise SettingsError("IOTPIPE_SENSORS lists a sensor twice")
    return names


@dataclass(frozen=True)
class KafkaSettings:
    """How every client reaches the brokers; `client_config` is the one place this is mapped."""

    bootstrap: str
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password_file: str = ""
    ssl_ca_file: str = ""
    ssl_cert_file: str = ""
    ssl_key_file: str = ""
    timeout_s: float = 5.0

    def check_files(self) -> None:
        """Every credential file can be read: a wrong path stops a service at its start with
        one clear line (the clients read them again whenever one is made: a rotated secret)."""
        for name, path in (("IOTPIPE_KAFKA_SASL_PASSWORD_FILE", self.sasl_password_file),
                           ("IOTPIPE_KAFKA_SSL_CA_FILE", self.ssl_ca_file),
                           ("IOTPIPE_KAFKA_SSL_CERT_FILE", self.ssl_cert_file),
                           ("IOTPIPE_KAFKA_SSL_KEY_FILE", self.ssl_key_file)):
            try:
                if path:
                    open(path, "rb").close()
            except OSError as e:
                raise SettingsError(f"{name}={path!r}: cannot read: {e.strerror}") from None

    def sasl_password(self) -> str:
        if not self.sasl_password_file:
            return ""
        try:
            with open(self.sasl_password_file, encoding="utf-8") as f:
                return f.read().strip()
        except OSError as e:
            raise SettingsError(f"IOTPIPE_KAFKA_SASL_PASSWORD_FILE: cannot read: {e}") from None

    def client_config(self) -> dict[str, str]:
        """librdkafka (confluent-kafka) properties for these settings."""
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            conf |= {"sasl.mechanism": self.sasl_mechanism, "sasl.username": self.sasl_username,
                     "sasl.password": self.sasl_password()}
        optional = {"ssl.ca.location": self.ssl_ca_file,
                    "ssl.certificate.location": self.ssl_cert_file,
                    "ssl.key.location": self.ssl_key_file}
        conf |= {k: v for k, v in optional.items() if v}
        return conf

    def java_client_config(self) -> dict[str, str]:
        """The same settings as Java client properties (Spark's Kafka source adds `kafka.`)."""
        conf = {"bootstrap.servers": self.bootstrap, "security.protocol": self.security_protocol}
        if self.security_protocol.startswith("SASL"):
            module = ("org.apache.kafka.common.security.scram.ScramLoginModule"
                      if self.sasl_mechanism.startswith("SCRAM")
                      else "org.apache.kafka.common.security.plain.PlainLoginModule")
            conf |= {"sasl.mechanism": self.sasl_mechanism,
                     "sasl.jaas.config": f'{module} required '
                                         f'username="{_jaas(self.sasl_username)}" '
                                         f'password="{_jaas(self.sasl_password())}";'}
        if self.ssl_ca_file:
            conf |= {"ssl.truststore.type": "PEM", "ssl.truststore.location": self.ssl_ca_file}
        if self.ssl_cert_file and self.ssl_key_file:
            conf |= {"ssl.keystore.type": "PEM",
                     "ssl.keystore.certificate.chain": _read_file(self.ssl_cert_file),
                     "ssl.keystore.key": _read_file(self.ssl_key_file)}
        return conf


def _jaas(value: str) -> str:
    """A quoted JAAS value: Java's tokenizer reads a backslash as an escape (\\t is a tab) and
    ends a quoted value at a line break."""
    return (value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
            .replace("\r", "\\r"))


def _read_file(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as e:
        raise SettingsError(f"cannot read {path}: {e}") from None


@dataclass(frozen=True)
class Settings:
    kafka: KafkaSettings
    sensors: tuple[str, ...] = ("temperature", "humidity", "pressure")
    topic_prefix: str = ""
    topic_partitions: int = 3
    topic_retention_ms: int = 604_800_000
    allowed_lateness_s: float = 30.0
    rollup_s: int = 60
    rollup_retention_ms: int = 31_536_000_000
    query_host: str = "127.0.0.1"
    query_port: int = 5000
    query_workers: int = 2
    query_threads: int = 8
    query_readers: int = 2
    query_deadline_s: float = 20.0
    query_read_deadline_s: float = 10.0
    query_max_connections: int = 1000
    query_cache_messages: int = 250_000
    query_cache_s: float = 300.0
    query_rollups: bool = True
    max_window_s: float = 2_678_400.0
    max_body_bytes: int = 65_536
    api_token_file: str = ""
    log_format: str = "text"
    log_level: str = "INFO"
    devices_per_sensor: int = 1
    sensor_rate_hz: float = 1.0
    value_model: str = "uniform"
    duplicate_rate: float = 0.0
    late_rate: float = 0.0
    late_delay_s: float = 60.0
    producer_buffer_s: float = 300.0
    metrics_host: str = "127.0.0.1"
    sensors_metrics_port: int = 9109
    stream_metrics_port: int = 9108
    query_metrics_port: int = 9110
    spark_master: str = "local[2]"
    checkpoint_dir: str = ".data/checkpoints"
    window_s: int = 60
    trigger_s: float = 1.0
    stream_console: bool = True
    spark_jars: tuple[str, ...] = field(default_factory=tuple)
    data_dir: str = ".data"
    kafka_heap: str = "512m"

    def topic(self, sensor: str) -> str:
        return self.topic_prefix + sensor

    @property
    def rollup_topic(self) -> str:
        """Compacted topic of per-bucket aggregates (not a sensor: "rollups" is no sensor name)."""
        return self.topic_prefix + "rollups"

    @property
    def query_address(self) -> str:
        """host:port of the query service, an IPv6 host in brackets (as gunicorn and URLs read
        it: ":::5000" is no address)."""
        host = self.query_host
        return f"[{host}]:{self.query_port}" if ":" in host and not host.startswith("[") \
            else f"{host}:{self.query_port}"

    @property
    def query_read_deadline_max_s(self) -> float:
        """The longest a connection is given for its headers, or its body: each is given the
        read deadline and up to a fifth more, drawn at random (see the query front)."""
        return self.query_read_deadline_s * 1.2

    @property
    def query_stop_s(self) -> int:
        """How long a stopping query service lets the requests under way finish: a body read
        and the request's deadline (gunicorn's graceful timeout)."""
        return int(self.query_read_deadline_max_s + self.query_deadline_s) + 5

    @property
    def allowed_lateness_ms(self) -> int:
        return round(self.allowed_lateness_s * 1000)  # (int() would make 1.001 s 1000 ms)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read and validate every IOTPIPE_* variable; raise SettingsError on the first bad one."""
        env = os.environ if env is None else env
        unknown = sorted(k for k in env if k.startswith("IOTPIPE_")
                         and k not in ENV_VARS and k not in TOOL_VARS)
        if unknown:
            raise SettingsError(f"unknown setting(s): {', '.join(unknown)} (see README)")
        n = _number
        kafka = KafkaSettings(
            bootstrap=_bootstrap(env),
            security_protocol=_choice(env, "IOTPIPE_KAFKA_SECURITY_PROTOCOL",
                                      ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")),
            sasl_mechanism=_read(env, "IOTPIPE_KAFKA_SASL_MECHANISM"),
            sasl_username=_read(env, "IOTPIPE_KAFKA_SASL_USERNAME"),
            sasl_password_file=_read(env, "IOTPIPE_KAFKA_SASL_PASSWORD_FILE"),
            ssl_ca_file=_read(env, "IOTPIPE_KAFKA_SSL_CA_FILE"),
            ssl_cert_file=_read(env, "IOTPIPE_KAFKA_SSL_CERT_FILE"),
            ssl_key_file=_read(env, "IOTPIPE_KAFKA_SSL_KEY_FILE"),
            timeout_s=n(env, "IOTPIPE_KAFKA_TIMEOUT_SECONDS", float, 0.1, 300),
        )
        if kafka.security_protocol.startswith("SASL") and not (
                kafka.sasl_mechanism and kafka.sasl_username):
            raise SettingsError("SASL needs IOTPIPE_KAFKA_SASL_MECHANISM and _SASL_USERNAME")
        if kafka.sasl_mechanism not in ("", *SASL_MECHANISMS):  # the ones both clients map
            raise SettingsError(f"IOTPIPE_KAFKA_SASL_MECHANISM={kafka.sasl_mechanism!r} must be "
                                f"one of {', '.join(SASL_MECHANISMS)}")
        jars = tuple(j for j in _read(env, "IOTPIPE_SPARK_JARS").split(",") if j)
        prefix = _read(env, "IOTPIPE_TOPIC_PREFIX")
        if prefix and not SENSOR_NAME.match(prefix):
            raise SettingsError(f"IOTPIPE_TOPIC_PREFIX={prefix!r} is not a valid topic prefix")
        return cls(
            kafka=kafka,
            sensors=_sensors(env),
            topic_prefix=prefix,
            topic_partitions=n(env, "IOTPIPE_TOPIC_PARTITIONS", int, 1, 1000),
            topic_retention_ms=n(env, "IOTPIPE_TOPIC_RETENTION_MS", int, -1, 2**62),
            # at least 1 ms: with 0, a second reading of the same millisecond would be late
            allowed_lateness_s=n(env, "IOTPIPE_ALLOWED_LATENESS_SECONDS", float, 0.001, 86_400),
            rollup_s=n(env, "IOTPIPE_ROLLUP_SECONDS", int, 1, 86_400),
            rollup_retention_ms=n(env, "IOTPIPE_ROLLUP_RETENTION_MS", int, -1, 2**62),
            query_host=_read(env, "IOTPIPE_QUERY_HOST"),
            query_port=_port(env, "IOTPIPE_QUERY_PORT"),
            query_workers=n(env, "IOTPIPE_QUERY_WORKERS", int, 1, 64),
            query_threads=n(env, "IOTPIPE_QUERY_THREADS", int, 1, 256),
            query_readers=n(env, "IOTPIPE_QUERY_READERS", int, 0, 64),
            query_deadline_s=n(env, "IOTPIPE_QUERY_DEADLINE_SECONDS", float, 0.1, 3600),
            query_read_deadline_s=n(env, "IOTPIPE_QUERY_READ_DEADLINE_SECONDS", float, 0.1, 3600),
            query_max_connections=n(env, "IOTPIPE_QUERY_MAX_CONNECTIONS", int, 1, 100_000),
            query_cache_messages=n(env, "IOTPIPE_QUERY_CACHE_MESSAGES", int, 0, 100_000_000),
            query_cache_s=n(env, "IOTPIPE_QUERY_CACHE_SECONDS", float, 0, 86_400),
            query_rollups=_flag(env, "IOTPIPE_QUERY_ROLLUPS"),
            max_window_s=n(env, "IOTPIPE_MAX_WINDOW_SECONDS", float, 1, 10 * 365 * 86_400),
            max_body_bytes=n(env, "IOTPIPE_MAX_BODY_BYTES", int, 256, 16 * 2**20),
            api_token_file=_read(env, "IOTPIPE_API_TOKEN_FILE"),
            log_format=_choice(env, "IOTPIPE_LOG_FORMAT", ("text", "json")),
            log_level=_choice(env, "IOTPIPE_LOG_LEVEL", ("DEBUG", "INFO", "WARNING", "ERROR")),
            devices_per_sensor=n(env, "IOTPIPE_DEVICES_PER_SENSOR", int, 1, 1_000_000),
            sensor_rate_hz=n(env, "IOTPIPE_SENSOR_RATE_HZ", float, 0.001, 1_000_000),
            value_model=_choice(env, "IOTPIPE_VALUE_MODEL", ("uniform", "daily")),
            duplicate_rate=n(env, "IOTPIPE_DUPLICATE_RATE", float, 0, 1),
            late_rate=n(env, "IOTPIPE_LATE_RATE", float, 0, 1),
            late_delay_s=n(env, "IOTPIPE_LATE_DELAY_SECONDS", float, 0, 86_400),
            producer_buffer_s=n(env, "IOTPIPE_PRODUCER_BUFFER_SECONDS", float, 1, 86_400),
            metrics_host=_read(env, "IOTPIPE_METRICS_HOST"),
            sensors_metrics_port=_port(env, "IOTPIPE_SENSORS_METRICS_PORT"),
            stream_metrics_port=_port(env, "IOTPIPE_STREAM_METRICS_PORT"),
            query_metrics_port=_port(env, "IOTPIPE_QUERY_METRICS_PORT"),
            spark_master=_read(env, "IOTPIPE_SPARK_MASTER"),
            checkpoint_dir=_read(env, "IOTPIPE_CHECKPOINT_DIR"),
            window_s=n(env, "IOTPIPE_WINDOW_SECONDS", int, 1, 86_400),
            trigger_s=n(env, "IOTPIPE_TRIGGER_SECONDS", float, 0.1, 3600),
            stream_console=_flag(env, "IOTPIPE_STREAM_CONSOLE"),
            spark_jars=jars,
            data_dir=_read(env, "IOTPIPE_DATA_DIR"),
            kafka_heap=_heap(env),
        )


def unwritable(folder: Path) -> str | None:
    """Why `folder` cannot hold our files, or None: it is created if missing and a 4 KiB probe
    is written, so a full disk shows at start-up as one clear line, not later as a crash."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-probe"
        probe.write_bytes(b"x" * 4096)
        probe.unlink(missing_ok=True)  # another process probing at the same moment
    except OSError as e:
        return e.strerror or str(e)
    return None
