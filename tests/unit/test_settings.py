from __future__ import annotations

import pytest

from iotpipe.core.settings import ENV_VARS, Settings, SettingsError


def test_defaults_are_valid_and_documented_values() -> None:
    s = Settings.from_env({})
    assert s.kafka.bootstrap == "127.0.0.1:9092"
    assert s.sensors == ("temperature", "humidity", "pressure")
    assert s.topic_partitions == 3
    assert s.allowed_lateness_ms == 30_000
    assert (s.query_host, s.query_port) == ("127.0.0.1", 5000)
    assert s.kafka.client_config() == {"bootstrap.servers": "127.0.0.1:9092",
                                       "security.protocol": "PLAINTEXT"}


@pytest.mark.parametrize("env,message", [
    ({"IOTPIPE_TOPIC_PARTITIONS": "0"}, "IOTPIPE_TOPIC_PARTITIONS='0' must be between"),
    ({"IOTPIPE_TOPIC_PARTITIONS": "three"}, "is not a valid int"),
    ({"IOTPIPE_SENSORS": " , "}, "at least one sensor"),
    ({"IOTPIPE_SENSORS": "a,a"}, "twice"),
    ({"IOTPIPE_SENSORS": "ok,bad name"}, "invalid sensor names: bad name"),
    ({"IOTPIPE_SENSORS": "from"}, "invalid sensor names: from"),
    ({"IOTPIPE_LOG_FORMAT": "xml"}, "must be one of text, json"),
    ({"IOTPIPE_STREAM_CONSOLE": "maybe"}, "must be true or false"),
    ({"IOTPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL"}, "SASL needs"),
    # Java's clients would get the PLAIN login module for any other (or a lower-case) name
    ({"IOTPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "IOTPIPE_KAFKA_SASL_USERNAME": "q",
      "IOTPIPE_KAFKA_SASL_MECHANISM": "scram-sha-512"},
     "IOTPIPE_KAFKA_SASL_MECHANISM='scram-sha-512' must be one of PLAIN, SCRAM-SHA-256, "
     "SCRAM-SHA-512"),
    ({"IOTPIPE_KAFKA_SASL_MECHANISM": "GSSAPI"}, "must be one of PLAIN"),
    ({"IOTPIPE_QUERY_PORT": "70000"}, "must be between 0 and 65535"),
    ({"IOTPIPE_ALLOWED_LATENESS_SECONDS": "0"}, "must be between 0.001 and 86400"),
    ({"IOTPIPE_TYPO": "1"}, "unknown setting(s): IOTPIPE_TYPO"),
    ({"IOTPIPE_KAFKA_BOOTSTRAP": "127.0.0.1:"}, "each server must be host:port (port 1 to"),
    ({"IOTPIPE_KAFKA_BOOTSTRAP": "a:9092,b:99999"}, "each server must be host:port"),
    ({"IOTPIPE_KAFKA_HEAP": "64m"}, "IOTPIPE_KAFKA_HEAP='64m' must be a JVM size of at least"),
    ({"IOTPIPE_KAFKA_HEAP": "1 g"}, "must be a JVM size"),
])
def test_bad_values_name_the_variable(env: dict[str, str], message: str) -> None:
    with pytest.raises(SettingsError) as e:
        Settings.from_env(env)
    assert message in str(e.value)


@pytest.mark.parametrize("bootstrap", ["kafka", "a:1,b:65535", "SASL_SSL://k.example:9093",
                                       "[::1]:9092", "10.0.0.1:9092, 10.0.0.2:9092"])
def test_bootstrap_servers_as_librdkafka_takes_them(bootstrap: str) -> None:
    assert Settings.from_env({"IOTPIPE_KAFKA_BOOTSTRAP": bootstrap}).kafka.bootstrap == bootstrap


def test_the_build_tools_variables_are_not_taken_for_typos() -> None:
    """`IOTPIPE_DOCKER_CACHE=... make test` starts services that inherit the variable."""
    tools = {"IOTPIPE_DOCKER_CACHE": "/c", "IOTPIPE_CRD_DIR": "/d", "IOTPIPE_CRD_MIRROR": "file:///m"}
    assert Settings.from_env(tools) == Settings.from_env({})
    with pytest.raises(SettingsError, match="unknown setting"):
        Settings.from_env(tools | {"IOTPIPE_CRD_DIRS": "/d"})


def test_sasl_ssl_maps_to_both_client_kinds(tmp_path) -> None:
    (tmp_path / "pw").write_text("s3cr\"e\\t\n")  # a quote, a backslash before a t
    (tmp_path / "ca.crt").write_text("PEM")
    s = Settings.from_env({
        "IOTPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_SSL", "IOTPIPE_KAFKA_SASL_MECHANISM":
        "SCRAM-SHA-512", "IOTPIPE_KAFKA_SASL_USERNAME": "query",
        "IOTPIPE_KAFKA_SASL_PASSWORD_FILE": str(tmp_path / "pw"),
        "IOTPIPE_KAFKA_SSL_CA_FILE": str(tmp_path / "ca.crt")}).kafka
    assert s.client_config() == {
        "bootstrap.servers": "127.0.0.1:9092", "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512", "sasl.username": "query", "sasl.password": 's3cr"e\\t',
        "ssl.ca.location": str(tmp_path / "ca.crt")}
    java = s.java_client_config()
    assert java["sasl.jaas.config"] == (
        'org.apache.kafka.common.security.scram.ScramLoginModule required '
        'username="query" password="s3cr\\"e\\\\t";')  # escaped for Java's tokenizer
    assert java["ssl.truststore.type"] == "PEM"


def test_every_variable_has_help_and_a_valid_default() -> None:
    assert all(v.help for v in ENV_VARS.values())
    Settings.from_env({name: v.default for name, v in ENV_VARS.items()})


def test_lateness_in_milliseconds_is_the_one_written() -> None:
    """Seconds with a millisecond part become exactly those milliseconds (a double's 1.001 *
    1000 is 1000.9999999999999: truncated, a reading exactly that late would count as late)."""
    for ms in range(1, 5001):
        env = {"IOTPIPE_ALLOWED_LATENESS_SECONDS": f"{ms // 1000}.{ms % 1000:03d}"}
        assert Settings.from_env(env).allowed_lateness_ms == ms


def test_gunicorn_waits_for_a_body_past_the_read_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """gunicorn's timeout also bounds its wait for a body's next bytes: shorter than the read
    deadline, a slow body got a 408 that named the read deadline before it had passed."""
    import importlib
    import sys

    monkeypatch.setenv("IOTPIPE_QUERY_READ_DEADLINE_SECONDS", "100")
    monkeypatch.setenv("IOTPIPE_QUERY_DEADLINE_SECONDS", "1")
    sys.modules.pop("iotpipe.query.gunicorn_conf", None)
    try:
        # (a connection is given the read deadline and up to a fifth more)
        assert importlib.import_module("iotpipe.query.gunicorn_conf").timeout > 100 * 1.2
    finally:
        sys.modules.pop("iotpipe.query.gunicorn_conf", None)


def test_a_stop_waits_for_the_longest_body_read_and_the_deadline() -> None:
    settings = Settings.from_env({"IOTPIPE_QUERY_READ_DEADLINE_SECONDS": "100",
                                  "IOTPIPE_QUERY_DEADLINE_SECONDS": "20"})
    assert settings.query_stop_s >= 100 * 1.2 + 20


@pytest.mark.parametrize("host,bind", [("127.0.0.1", "127.0.0.1:5000"), ("0.0.0.0", "0.0.0.0:5000"),
                                       ("::", "[::]:5000"), ("::1", "[::1]:5000"),
                                       ("[::]", "[::]:5000"), ("localhost", "localhost:5000")])
def test_gunicorn_binds_ipv4_and_ipv6_hosts(monkeypatch: pytest.MonkeyPatch, host: str,
                                            bind: str) -> None:
    import importlib
    import sys

    monkeypatch.setenv("IOTPIPE_QUERY_HOST", host)
    sys.modules.pop("iotpipe.query.gunicorn_conf", None)
    try:
        assert importlib.import_module("iotpipe.query.gunicorn_conf").bind == bind
    finally:
        sys.modules.pop("iotpipe.query.gunicorn_conf", None)


@pytest.mark.parametrize("name", ["IOTPIPE_KAFKA_SASL_PASSWORD_FILE", "IOTPIPE_KAFKA_SSL_CA_FILE",
                                  "IOTPIPE_KAFKA_SSL_CERT_FILE", "IOTPIPE_KAFKA_SSL_KEY_FILE"])
def test_a_credential_file_that_cannot_be_read_is_a_settings_error(tmp_path, name: str) -> None:
    """Checked at start-up, not inside the first client made (the stream's would end in a
    traceback); parsing alone does not read them (the chart's tests parse its pods' env)."""
    for path, why in ((tmp_path / "missing.pem", "No such file"), (tmp_path, "Is a directory")):
        kafka = Settings.from_env({name: str(path)}).kafka
        with pytest.raises(SettingsError, match=f"^{name}='{path}': cannot read: {why}"):
            kafka.check_files()
    (tmp_path / "ok.pem").write_text("PEM")
    Settings.from_env({name: str(tmp_path / "ok.pem")}).kafka.check_files()


def test_a_password_with_a_line_break_is_escaped_for_java(tmp_path) -> None:
    (tmp_path / "pw").write_text("line\none\r\n")
    s = Settings.from_env({
        "IOTPIPE_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT", "IOTPIPE_KAFKA_SASL_MECHANISM":
        "PLAIN", "IOTPIPE_KAFKA_SASL_USERNAME": "q", "IOTPIPE_KAFKA_SASL_PASSWORD_FILE":
        str(tmp_path / "pw")}).kafka
    assert s.client_config()["sasl.password"] == "line\none"
    assert s.java_client_config()["sasl.jaas.config"].endswith('password="line\\none";')


MISSING_CA = "IOTPIPE_KAFKA_SSL_CA_FILE='missing.pem': cannot read: No such file or directory"


@pytest.mark.parametrize("app,env,line", [
    ("query", {"IOTPIPE_API_TOKEN_FILE": "short"},
     "iotpipe query: IOTPIPE_API_TOKEN_FILE: the token must have 16 characters or more"),
    ("query", {"IOTPIPE_KAFKA_SSL_CA_FILE": "missing.pem"}, f"iotpipe query: {MISSING_CA}"),
    ("stream", {"IOTPIPE_KAFKA_SSL_CA_FILE": "missing.pem"}, f"iotpipe stream: {MISSING_CA}"),
    ("sensors", {"IOTPIPE_KAFKA_SSL_CA_FILE": "missing.pem"}, f"iotpipe sensors: {MISSING_CA}"),
])
def test_an_app_refuses_bad_files_in_one_line_at_its_start(
        tmp_path, app: str, env: dict[str, str], line: str) -> None:
    """Checked by `python -m iotpipe.<app>` itself: in gunicorn's workers a bad token file
    ended in a traceback per worker, in the stream's first client a missing file too."""
    import os
    import subprocess
    import sys

    (tmp_path / "short").write_text("abc")
    done = subprocess.run([sys.executable, "-m", f"iotpipe.{app}"], cwd=tmp_path,
                          env={k: v for k, v in os.environ.items()
                               if not k.startswith("IOTPIPE_")} | env,
                          capture_output=True, text=True, timeout=60, check=False)
    assert (done.returncode, done.stderr) == (1, line + "\n")
