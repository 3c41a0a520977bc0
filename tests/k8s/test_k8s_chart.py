"""The chart lints, renders and validates against the target Kubernetes version's schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from k8s_support import (
    CHART,
    KUBE_VERSION,
    VALUE_SETS,
    Rendering,
    containers,
    env_of,
    helm_args,
    matches,
    pod_specs,
    run,
    spark_roles,
    tool,
)

CRD_GROUPS = ("kafka.strimzi.io", "sparkoperator.k8s.io", "monitoring.coreos.com")


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_helm_lint_strict(value_set: str) -> None:
    result = run([tool("helm"), "lint", "--strict", CHART, *helm_args(value_set)])
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize(
    "typo",
    [
        "query.replicaz=3",
        "kafka.security.enabeld=true",
        "sensors[0].rate=5",
        "common.logFormat=yaml",
        "rollups.bucketSeconds=0",
        "query.rollups=maybe",
        # values the CRDs or Kubernetes would refuse, or the chart cannot run with
        "kafka.plainPort=9091",  # (Strimzi's listeners start at 9092)
        "stream.checkpoint.accessMode=ReadWriteOncePod",  # (driver and executors mount it)
        "monitoring.interval=abc",
        "monitoring.prometheusRules.noDataFor=5 minutes",
        "query.podDisruptionBudget.minAvailable=abc",
    ],
)
def test_values_schema_rejects_bad_values(typo: str) -> None:
    result = run([tool("helm"), "lint", "--strict", CHART, "--set", typo])
    assert result.returncode != 0, f"values.schema.json accepted {typo}"


def _sensor(devices: int, rate_hz: float) -> str:
    return json.dumps([{"type": "temperature", "devices": devices, "rateHz": rate_hz}])


@pytest.mark.parametrize(
    "value, ok",
    [  # each at the edge of the range settings.py accepts, then just past it
        ("common.allowedLatenessSeconds=86400", True),
        ("common.allowedLatenessSeconds=86400.5", False),
        ("stream.windowSeconds=86400", True),
        ("stream.windowSeconds=86401", False),
        ("stream.triggerSeconds=0.1", True),
        ("stream.triggerSeconds=0.09", False),
        ("stream.triggerSeconds=3601", False),
        (f"sensors={_sensor(1_000_000, 0.001)}", True),
        (f"sensors={_sensor(1_000_001, 1)}", False),
        (f"sensors={_sensor(1, 0.0009)}", False),
        (f"sensors={_sensor(1, 1_000_001)}", False),
    ],
)
def test_values_schema_keeps_the_services_ranges(value: str, ok: bool) -> None:
    """A value the services refuse at start (a pod in a crash loop) fails `helm install`."""
    result = run([tool("helm"), "lint", "--strict", CHART, "--set-json", value])
    assert (result.returncode == 0) == ok, result.stdout + result.stderr


@pytest.mark.parametrize("name, ok", [("wind", True), ("rollups", False), ("from", False)])
def test_sensor_types_cannot_take_reserved_names(name: str, ok: bool) -> None:
    """`rollups` would collide with the rollup topic; `from`/`to` with the API's fields."""
    sensor = f"sensors[0].type={name},sensors[0].devices=1,sensors[0].rateHz=1"
    result = run([tool("helm"), "lint", "--strict", CHART, "--set", sensor])
    assert (result.returncode == 0) is ok, result.stdout + result.stderr


@pytest.mark.parametrize("release, stream, refused", [
    ("r" * 40, "true", None), ("r" * 41, "true", "stream-metrics"),
    ("r" * 49, "false", None), ("r" * 50, "false", "query")])
def test_a_service_name_past_63_characters_stops_the_install(release: str, stream: str,
                                                             refused: str | None) -> None:
    """The longest Service name, `<release>-iotpipe-stream-metrics`, or `-query` without a
    stream, is refused past 63 characters."""
    result = run([tool("helm"), "template", release, CHART, "--kube-version", KUBE_VERSION,
                  "--set", f"stream.enabled={stream}"])
    if refused:
        assert result.returncode != 0
        assert f"the name {release}-iotpipe-{refused} has more than the 63" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    services = [d["metadata"]["name"] for d in docs if d["kind"] == "Service"]
    assert services and max(map(len, services)) <= 63, services


@pytest.mark.parametrize("types, secure, refused", [
    (["temperature", "humidity", "pressure"], True, False),
    (["temperature-a", "temperature-b"], True, True),
    (["temperature-a", "temperature-b"], False, False)])
def test_kafka_users_keep_their_cut_and_never_merge(types: list[str], secure: bool,
                                                    refused: bool) -> None:
    """KafkaUser names are cut at 63 characters as before (renamed, an upgrade would delete
    them and their Secrets); sensor types that the cut makes one user are refused."""
    release = "r" * 40  # the longest the Services allow
    sensors = [{"type": t, "devices": 1, "rateHz": 1} for t in types]
    result = run([tool("helm"), "template", release, CHART, "--kube-version", KUBE_VERSION,
                  "--set", f"kafka.security.enabled={str(secure).lower()}",
                  "--set-json", f"sensors={json.dumps(sensors)}"])
    if refused:
        assert result.returncode != 0
        assert ("the user sensor-temperature-a and the user sensor-temperature-b would be one "
                "KafkaUser") in result.stderr
        return
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    users = [d["metadata"]["name"] for d in docs if d["kind"] == "KafkaUser"]
    assert sorted(users) == (sorted(f"{release}-iotpipe-{user}"[:63] for user in (
        "query", "stream", *(f"sensor-{t}" for t in types))) if secure else [])


@pytest.mark.parametrize("prefix, refused", [("p" * 62, False), ("p" * 63, True)])
def test_kafka_topic_names_keep_their_cut_and_never_merge(prefix: str, refused: bool) -> None:
    """A KafkaTopic's name is cut at 63 characters as before (renamed, an upgrade would delete
    the topic); a prefix long enough to make two of them one is refused."""
    result = run([tool("helm"), "template", "iotpipe", CHART, "--kube-version", KUBE_VERSION,
                  "--set", f"common.topicPrefix={prefix}"])
    if refused:
        assert result.returncode != 0
        assert "would be one KafkaTopic" in result.stderr and "common.topicPrefix" in result.stderr
        return
    assert result.returncode == 0, result.stderr
    docs = [d for d in yaml.safe_load_all(result.stdout) if d]
    topics = {d["metadata"]["name"]: d["spec"]["topicName"] for d in docs
              if d["kind"] == "KafkaTopic"}
    assert topics == {(prefix + t)[:63]: prefix + t
                      for t in ("temperature", "humidity", "pressure", "rollups")}


def test_kubernetes_validate_strict(rendering: Rendering, tmp_path: Path) -> None:
    manifest = tmp_path / f"{rendering.name}.yaml"
    manifest.write_text(rendering.text)
    result = run([tool("kubernetes-validate"), "--strict", "-k", KUBE_VERSION, manifest])
    out = result.stdout + result.stderr
    assert result.returncode == 0, out
    missing = re.findall(r"Couldn't find schema for kind (\S+) with api version (\S+)", out)
    core_missing = [(k, v) for k, v in missing if v.split("/")[0] not in CRD_GROUPS]
    assert not core_missing, f"no schema for core kinds: {core_missing}"
    core_docs = [d for d in rendering.docs if d["apiVersion"].split("/")[0] not in CRD_GROUPS]
    assert out.count(" passed for resource ") == len(core_docs), out


def test_every_iotpipe_env_is_a_known_setting(rendering: Rendering) -> None:
    from iotpipe.core.settings import ENV_VARS

    names = {n for _, _, spec in pod_specs(rendering) for c in containers(spec) for n in env_of(c)}
    names |= {n for _, role, _ in spark_roles(rendering) for n in env_of(role)}
    used = {n for n in names if n.startswith("IOTPIPE_")}
    assert used, "no IOTPIPE_* settings rendered"
    assert used <= set(ENV_VARS), f"unknown settings: {sorted(used - set(ENV_VARS))}"


def _security_contexts(r: Rendering) -> list[tuple[str, dict, dict]]:
    """(where, pod securityContext, container securityContext) of every pod the chart shapes."""
    out = [
        (f"{name}/{c['name']}", spec.get("securityContext", {}), c.get("securityContext", {}))
        for name, _, spec in pod_specs(r)
        for c in containers(spec)
    ]
    out += [
        (
            f"SparkApplication/{app['metadata']['name']}/{role}",
            spec.get("podSecurityContext", {}),
            spec.get("securityContext", {}),
        )
        for role, spec, app in spark_roles(r)
    ]
    for pool in r.of_kind("KafkaNodePool"):
        t = pool["spec"]["template"]
        out.append(
            (
                f"KafkaNodePool/{pool['metadata']['name']}",
                t["pod"]["securityContext"],
                t["kafkaContainer"]["securityContext"],
            )
        )
    for kafka in r.of_kind("Kafka"):
        t = kafka["spec"]["entityOperator"]["template"]
        for c in ("topicOperatorContainer", "userOperatorContainer"):
            out.append(
                (
                    f"Kafka/{kafka['metadata']['name']}/{c}",
                    t["pod"]["securityContext"],
                    t[c]["securityContext"],
                )
            )
    return out


def test_restricted_pod_security(rendering: Rendering) -> None:
    contexts = _security_contexts(rendering)
    assert len(contexts) >= 7
    for where, pod, ctr in contexts:
        assert pod.get("runAsNonRoot") or ctr.get("runAsNonRoot"), where
        seccomp = ctr.get("seccompProfile") or pod.get("seccompProfile") or {}
        assert seccomp.get("type") == "RuntimeDefault", where
        assert ctr.get("allowPrivilegeEscalation") is False, where
        assert ctr.get("capabilities", {}).get("drop") == ["ALL"], where
        assert ctr.get("readOnlyRootFilesystem") is True, where
        assert pod.get("runAsUser", 1) != 0, where


def test_read_only_root_has_writable_tmp(rendering: Rendering) -> None:
    for name, _, spec in pod_specs(rendering):
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for c in containers(spec):
            tmp = [m for m in c.get("volumeMounts", []) if m["mountPath"] == "/tmp"]
            assert tmp and tmp[0]["name"] in empty_dirs, f"{name}/{c['name']} has no /tmp"
    for role, spec, app in spark_roles(rendering):
        vols = {v["name"] for v in app["spec"]["volumes"] if "emptyDir" in v}
        mounts = {m["mountPath"]: m["name"] for m in spec["volumeMounts"]}
        assert mounts.get("/tmp") in vols and mounts.get("/opt/spark/work-dir") in vols, role


def test_query_probes_use_health(rendering: Rendering) -> None:
    """Start-up and readiness ask /health; liveness only the listener: a worker at its
    connection limit answers 503, and a busy (not broken) pod must not be restarted."""
    query = rendering.one("Deployment", "iotpipe-query")["spec"]["template"]["spec"]
    c = query["containers"][0]
    http = ("http", c["ports"][0]["containerPort"])
    for probe in ("startupProbe", "readinessProbe"):
        assert c[probe]["httpGet"]["path"] == "/health", probe
        assert c[probe]["httpGet"]["port"] in http
    assert "httpGet" not in c["livenessProbe"] and c["livenessProbe"]["tcpSocket"]["port"] in http


def test_stream_application_shape(rendering: Rendering) -> None:
    app = rendering.one("SparkApplication", "iotpipe-stream")["spec"]
    assert app["type"] == "Python" and app["mode"] == "cluster"
    assert app["mainApplicationFile"] == (
        "local:///opt/iotpipe/services/iotpipe/stream/__main__.py"
    )
    assert app["restartPolicy"]["type"] in ("Always", "OnFailure")
    claim = next(v for v in app["volumes"] if v["name"] == "checkpoint")
    pvc = rendering.one("PersistentVolumeClaim", claim["persistentVolumeClaim"]["claimName"])
    mount = next(m for m in app["driver"]["volumeMounts"] if m["name"] == "checkpoint")
    assert env_of(app["driver"])["IOTPIPE_CHECKPOINT_DIR"].startswith(mount["mountPath"] + "/")
    assert pvc["spec"]["resources"]["requests"]["storage"]
    sa = rendering.one("ServiceAccount", app["driver"]["serviceAccount"])
    binding = rendering.one("RoleBinding", sa["metadata"]["name"])
    assert binding["subjects"][0]["name"] == sa["metadata"]["name"]
    role = rendering.one("Role", binding["roleRef"]["name"])
    assert "pods" in role["rules"][0]["resources"] and "create" in role["rules"][0]["verbs"]


def test_kafka_volumes_are_writable_and_kept(renderings: dict[str, Rendering]) -> None:
    """The chart replaces Strimzi's pod context: it must keep its fsGroup for the volumes."""
    for r in renderings.values():
        pool = r.one("KafkaNodePool", "iotpipe-dual-role")["spec"]
        assert pool["template"]["pod"]["securityContext"]["fsGroup"] == 0, r.name
    default = renderings["default"].one("KafkaNodePool", "iotpipe-dual-role")["spec"]
    assert default["storage"]["volumes"][0]["deleteClaim"] is False
    dev = renderings["kind"].one("KafkaNodePool", "iotpipe-dual-role")["spec"]
    assert dev["storage"]["volumes"][0]["deleteClaim"] is True


def test_query_pods_leave_their_service_before_they_stop(rendering: Rendering) -> None:
    """gunicorn closes its listener at SIGTERM, while proxies still route to the pod until they
    see its endpoint go: a preStop pause first, and the grace period covers it and gunicorn's
    own (the body's and the request's deadlines + 5 s)."""
    from iotpipe.core.settings import Settings

    pod = rendering.one("Deployment", "iotpipe-query")["spec"]["template"]["spec"]
    c = pod["containers"][0]
    command = c["lifecycle"]["preStop"]["exec"]["command"]
    assert command[0] == "sleep" and int(command[1]) >= 3
    env = {e["name"]: e["value"] for e in c.get("env", []) if "value" in e}
    s = Settings.from_env({k: v for k, v in env.items() if k.startswith("IOTPIPE_QUERY_")
                           and "DEADLINE" in k})
    assert int(command[1]) + s.query_stop_s < pod["terminationGracePeriodSeconds"]


def test_the_stream_driver_stops_within_its_grace_period(rendering: Rendering) -> None:
    """On SIGTERM the driver waits for a running batch to end, and that batch's rollup
    publish may then still wait for the broker: both fit before SIGKILL, with Spark's stop."""
    from iotpipe.core.settings import Settings
    from iotpipe.stream.main import BATCH_END_WAIT_S
    from iotpipe.stream.rollups import RollupPublisher

    driver = rendering.one("SparkApplication", "iotpipe-stream")["spec"]["driver"]
    env = {k: v for k, v in env_of(driver).items() if k == "IOTPIPE_KAFKA_TIMEOUT_SECONDS"}
    publish_s = RollupPublisher.timeout(Settings.from_env(env))
    assert BATCH_END_WAIT_S + publish_s + 10 <= driver["terminationGracePeriodSeconds"]


def test_the_sensors_stop_within_their_grace_period(rendering: Rendering) -> None:
    """On SIGTERM a fleet waits a while for room in a full queue, then flushes its producer."""
    from iotpipe.localstack.supervisor import PROGRAMS
    from iotpipe.sensors.fleet import FLUSH_S, STOP_ROOM_S

    for sensor in rendering.values["sensors"]:
        pod = rendering.one("Deployment", f"iotpipe-sensor-{sensor['type']}")["spec"]["template"]
        assert pod["spec"]["terminationGracePeriodSeconds"] >= STOP_ROOM_S + FLUSH_S + 5
    assert PROGRAMS["sensors"].stop_wait_s >= STOP_ROOM_S + FLUSH_S + 5


def test_a_sensor_is_never_sent_by_two_pods(rendering: Rendering) -> None:
    sensors = [d for d in rendering.of_kind("Deployment")
               if d["metadata"]["labels"].get("iotpipe.dev/sensor")]
    assert len(sensors) == len(rendering.values["sensors"])
    assert all(d["spec"]["strategy"] == {"type": "Recreate"} for d in sensors)


def test_the_stream_checkpoint_outlives_the_release_only_with_kafkas_data(
        rendering: Rendering) -> None:
    """Kept with volumes Kafka keeps (the offsets it holds point into them); deleted with
    them otherwise, or the stream would resume at offsets of topics made anew."""
    (claim,) = [d for d in rendering.of_kind("PersistentVolumeClaim")
                if d["metadata"]["name"].endswith("-checkpoint")]
    storage = rendering.values["kafka"]["storage"]
    kept = storage["type"] == "persistent-claim" and not storage["deleteClaim"]
    policy = claim["metadata"].get("annotations", {}).get("helm.sh/resource-policy")
    assert policy == ("keep" if kept else None)
    assert kept == (rendering.name == "default")  # the dev clusters' values delete Kafka's


def test_spark_executors_hold_no_api_token(rendering: Rendering) -> None:
    """Only the driver talks to the API server (it makes the executor pods); an executor runs
    tasks on untrusted messages, so its account has no token and no binding."""
    accounts = {d["metadata"]["name"]: d for d in rendering.of_kind("ServiceAccount")}
    bound = {s["name"] for b in rendering.of_kind("RoleBinding") for s in b["subjects"]}
    for role, spec, _ in spark_roles(rendering):
        account = accounts[spec["serviceAccount"]]
        if role == "executor":
            assert account["automountServiceAccountToken"] is False
            assert account["metadata"]["name"] not in bound
        else:
            assert account["metadata"]["name"] in bound


def test_only_this_releases_pods_reach_the_kafka_listener(rendering: Rendering) -> None:
    """Strimzi makes the listener's NetworkPolicy from its peers (none: every pod of the
    cluster): every pod that talks to Kafka (the Kafka env set) is among them, and
    kafka.clientPeers adds more."""
    (kafka,) = rendering.of_kind("Kafka")
    (listener,) = kafka["spec"]["kafka"]["listeners"]
    if not rendering.values["networkPolicy"]["enabled"]:
        assert "networkPolicyPeers" not in listener
        return
    (ours, *more) = listener["networkPolicyPeers"]
    assert more == rendering.values["kafka"]["clientPeers"]
    clients = [(name, meta["labels"]) for name, meta, spec in pod_specs(rendering)
               if any("IOTPIPE_KAFKA_BOOTSTRAP" in env_of(c) for c in containers(spec))]
    clients += [(f"{app['metadata']['name']}/{role}", spec["labels"])
                for role, spec, app in spark_roles(rendering)]
    assert len(clients) >= 3 + 2  # the sensors, the query service, the stream's two roles
    for name, labels in clients:
        assert matches(ours["podSelector"]["matchLabels"], labels), name
