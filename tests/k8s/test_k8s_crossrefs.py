"""Names that must agree across files: Kafka, topics, users, selectors, images, skaffold, values."""

from __future__ import annotations

import re
import tomllib

import yaml
from k8s_support import (
    CHART,
    ROOT,
    Doc,
    Rendering,
    containers,
    env_of,
    matches,
    pod_specs,
    releases,
    skaffold_config,
    spark_roles,
)


def skaffold() -> Doc:
    return skaffold_config("iotpipe")


def app_env(r: Rendering) -> list[tuple[str, dict[str, str]]]:
    """(workload, env) of every container and Spark driver that talks to Kafka."""
    out = [(name, env_of(c)) for name, _, spec in pod_specs(r) for c in containers(spec)]
    out += [
        (f"{app['metadata']['name']}/driver", env_of(spec))
        for role, spec, app in spark_roles(r)
        if role == "driver"
    ]
    return [(n, e) for n, e in out if "IOTPIPE_KAFKA_BOOTSTRAP" in e]


def test_strimzi_resources_point_at_the_kafka_cluster(rendering: Rendering) -> None:
    (kafka,) = rendering.of_kind("Kafka")
    for kind in ("KafkaNodePool", "KafkaTopic", "KafkaUser"):
        for doc in rendering.of_kind(kind):
            assert doc["metadata"]["labels"]["strimzi.io/cluster"] == kafka["metadata"]["name"]
    pools = rendering.of_kind("KafkaNodePool")
    assert any({"broker", "controller"} <= set(p["spec"]["roles"]) for p in pools)


def test_bootstrap_and_protocol_match_the_listener(rendering: Rendering) -> None:
    (kafka,) = rendering.of_kind("Kafka")
    listeners = kafka["spec"]["kafka"]["listeners"]
    assert len(listeners) == 1
    (listener,) = listeners
    expected = f"{kafka['metadata']['name']}-kafka-bootstrap:{listener['port']}"
    secure = listener["tls"] and listener.get("authentication", {}).get("type") == "scram-sha-512"
    assert secure == rendering.values["kafka"]["security"]["enabled"]
    clients = app_env(rendering)
    assert len(clients) == len(rendering.values["sensors"]) + 2
    for name, env in clients:
        assert env["IOTPIPE_KAFKA_BOOTSTRAP"] == expected, name
        assert env["IOTPIPE_KAFKA_SECURITY_PROTOCOL"] == ("SASL_SSL" if secure else "PLAINTEXT")


def test_secure_mode_mounts_what_strimzi_creates(rendering: Rendering) -> None:
    if not rendering.values["kafka"]["security"]["enabled"]:
        assert not rendering.of_kind("KafkaUser")
        return
    (kafka,) = rendering.of_kind("Kafka")
    users = {u["metadata"]["name"]: u for u in rendering.of_kind("KafkaUser")}
    ca_secret = f"{kafka['metadata']['name']}-cluster-ca-cert"
    workloads = [
        (n, s.get("volumes", []), c) for n, _, s in pod_specs(rendering) for c in containers(s)
    ]
    workloads += [
        (f"{app['metadata']['name']}/{role}", app["spec"]["volumes"], spec)
        for role, spec, app in spark_roles(rendering)
    ]
    for name, volumes, c in workloads:
        secrets = {v["name"]: v["secret"]["secretName"] for v in volumes if "secret" in v}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        env = env_of(c)
        user_dir, ca_dir = "/etc/iotpipe/kafka/user", "/etc/iotpipe/kafka/ca"
        assert secrets[mounts[user_dir]] in users and secrets[mounts[ca_dir]] == ca_secret, name
        if env:
            assert env["IOTPIPE_KAFKA_SASL_USERNAME"] == secrets[mounts[user_dir]], name
            assert env["IOTPIPE_KAFKA_SASL_PASSWORD_FILE"] == f"{user_dir}/password"
            assert env["IOTPIPE_KAFKA_SSL_CA_FILE"] == f"{ca_dir}/ca.crt"


def test_topics_match_the_apps_settings(rendering: Rendering) -> None:
    from iotpipe.core.settings import Settings

    v = rendering.values
    topics = {t["spec"]["topicName"]: t["spec"] for t in rendering.of_kind("KafkaTopic")}
    for name, env in app_env(rendering):
        settings = Settings.from_env(env)
        assert {settings.topic(s) for s in settings.sensors} <= set(topics), name
    rollups = v["common"]["topicPrefix"] + "rollups"
    sensor_topics = {v["common"]["topicPrefix"] + s["type"] for s in v["sensors"]}
    assert set(topics) == sensor_topics | {rollups}
    for name in sensor_topics:
        assert topics[name]["partitions"] == v["kafka"]["topics"]["partitions"]
        assert topics[name]["config"]["retention.ms"] == v["kafka"]["topics"]["retentionMs"]
    for user in rendering.of_kind("KafkaUser"):
        for acl in user["spec"]["authorization"]["acls"]:
            if acl["resource"]["type"] == "topic":
                assert acl["resource"]["name"] in topics, user["metadata"]["name"]


def _rollup_clients(r: Rendering) -> dict[str, dict[str, str]]:
    """Env of the stream driver (writes the rollups) and the query container (reads them)."""
    clients = dict(app_env(r))
    return {
        "stream": clients["iotpipe-stream/driver"],
        "query": clients["Deployment/iotpipe-query"],
    }


def test_rollup_topic_is_the_one_both_services_use(rendering: Rendering) -> None:
    """Compacted (a bucket's latest value is all that counts), one partition (the stream's write
    order), its own retention, with the name and retention the apps' Settings expect."""
    from iotpipe.core.settings import Settings
    from iotpipe.localstack.topics import rollup_topic_config

    v = rendering.values
    topics = {t["spec"]["topicName"]: t["spec"] for t in rendering.of_kind("KafkaTopic")}
    for role, env in _rollup_clients(rendering).items():
        settings = Settings.from_env(env)
        spec = topics[settings.rollup_topic]
        assert spec["partitions"] == 1 and spec["replicas"] == v["kafka"]["topics"]["replicas"]
        want = rollup_topic_config(settings)  # what `make run` creates
        assert {k: str(v) for k, v in spec["config"].items()} == want, role
        assert settings.rollup_retention_ms == v["rollups"]["retentionMs"], role


def test_stream_and_query_agree_on_the_buckets(rendering: Rendering) -> None:
    from iotpipe.core.settings import Settings

    v = rendering.values
    clients = _rollup_clients(rendering)
    stream, query = (Settings.from_env(clients[k]) for k in ("stream", "query"))
    assert stream.rollup_s == query.rollup_s == v["rollups"]["bucketSeconds"]
    assert query.query_rollups is v["query"]["rollups"]
    assert "IOTPIPE_QUERY_ROLLUPS" not in clients["stream"]


def test_users_write_only_their_own_topic(rendering: Rendering) -> None:
    """Sensors write their topic, the stream the rollup topic; the query service only reads."""
    prefix = rendering.values["common"]["topicPrefix"]
    for user in rendering.of_kind("KafkaUser"):
        acls = user["spec"]["authorization"]["acls"]
        writes = [a["resource"]["name"] for a in acls if "Write" in a["operations"]]
        reads = {a["resource"]["name"] for a in acls if "Read" in a["operations"]}
        name = user["metadata"]["name"]
        if "-sensor-" in name:
            sensor = name.rsplit("-sensor-", 1)[1]
            assert writes == [prefix + sensor], name
        elif name.endswith("-stream"):
            assert writes == [prefix + "rollups"] and prefix + "rollups" not in reads, name
        else:
            assert name.endswith("-query") and not writes, f"{name} must only read"
            assert prefix + "rollups" in reads, name
            # the retention notes: topic configs of every sensor topic it reads
            topics = {a["resource"]["name"] for a in acls if a["resource"]["type"] == "topic"}
            assert {a["resource"]["name"] for a in acls if "DescribeConfigs" in a["operations"]
                    } == topics - {prefix + "rollups"}
    users = {u["metadata"]["name"] for u in rendering.of_kind("KafkaUser")}
    secure = rendering.values["kafka"]["security"]["enabled"]
    assert ({"iotpipe-stream", "iotpipe-query"} <= users) == secure


def test_selectors_find_their_pods(rendering: Rendering) -> None:
    pods = {name: meta["labels"] for name, meta, _ in pod_specs(rendering)}
    pods |= {
        f"{app['metadata']['name']}/{role}": {**spec["labels"], "spark-role": role}
        for role, spec, app in spark_roles(rendering)
    }
    for svc in rendering.of_kind("Service"):
        assert any(matches(svc["spec"]["selector"], lbl) for lbl in pods.values()), svc
    for kind in ("PodMonitor", "PodDisruptionBudget"):
        for doc in rendering.of_kind(kind):
            sel = doc["spec"]["selector"]["matchLabels"]
            assert any(matches(sel, lbl) for lbl in pods.values()), doc["metadata"]["name"]
    for sm in rendering.of_kind("ServiceMonitor"):
        sel = sm["spec"]["selector"]["matchLabels"]
        services = [
            s for s in rendering.of_kind("Service") if matches(sel, s["metadata"]["labels"])
        ]
        assert services, sm["metadata"]["name"]
        ports = {p["name"] for s in services for p in s["spec"]["ports"]}
        assert {e["port"] for e in sm["spec"]["endpoints"]} <= ports
    for d in rendering.of_kind("Deployment"):
        sel = d["spec"]["selector"]["matchLabels"]
        assert matches(sel, d["spec"]["template"]["metadata"]["labels"])
        others = [n for n, lbl in pods.items() if n != f"Deployment/{d['metadata']['name']}"]
        assert not any(matches(sel, pods[n]) for n in others), f"{d['metadata']['name']} overlaps"


def test_monitor_ports_exist_on_the_pods(rendering: Rendering) -> None:
    ports = {
        p["name"]
        for _, _, s in pod_specs(rendering)
        for c in containers(s)
        for p in c.get("ports", [])
    }
    ports |= {p["name"] for _, spec, _ in spark_roles(rendering) for p in spec.get("ports", [])}
    for pm in rendering.of_kind("PodMonitor"):
        assert {e["port"] for e in pm["spec"]["podMetricsEndpoints"]} <= ports


def test_ingress_hpa_and_pdb_target_the_query_service(rendering: Rendering) -> None:
    (ing,) = rendering.of_kind("Ingress")
    assert ing["spec"]["ingressClassName"] == rendering.values["query"]["ingress"]["className"]
    backend = ing["spec"]["rules"][0]["http"]["paths"][0]["backend"]["service"]
    svc = rendering.one("Service", backend["name"])
    assert backend["port"]["name"] in {p["name"] for p in svc["spec"]["ports"]}
    (hpa,) = rendering.of_kind("HorizontalPodAutoscaler")
    target = rendering.one("Deployment", hpa["spec"]["scaleTargetRef"]["name"])
    assert "replicas" not in target["spec"], "the HPA owns the replica count"


def test_metrics_have_their_own_port_off_the_ingress(rendering: Rendering) -> None:
    """With or without the API token (the `secure` set has one), Prometheus scrapes a port that
    asks no token, and the Ingress routes only the API port."""
    v = rendering.values["query"]
    query = rendering.one("Deployment", "iotpipe-query")["spec"]["template"]["spec"]
    (c,) = query["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"http": v["port"], "metrics": v["metricsPort"]}
    env = env_of(c)
    assert env["IOTPIPE_QUERY_METRICS_PORT"] == str(v["metricsPort"])
    assert env["IOTPIPE_METRICS_HOST"] == "0.0.0.0"
    assert ("IOTPIPE_API_TOKEN_FILE" in env) == bool(v["apiTokenSecret"])
    (monitor,) = rendering.of_kind("ServiceMonitor")
    assert [e["port"] for e in monitor["spec"]["endpoints"]] == ["metrics"]
    svc = rendering.one("Service", "iotpipe-query")
    assert {p["name"]: p["targetPort"] for p in svc["spec"]["ports"]} == {
        "http": "http", "metrics": "metrics"}
    (ing,) = rendering.of_kind("Ingress")
    backends = {p["backend"]["service"]["port"]["name"]
                for rule in ing["spec"]["rules"] for p in rule["http"]["paths"]}
    assert backends == {"http"}


def test_network_policies_open_the_metrics_and_api_ports(rendering: Rendering) -> None:
    v = rendering.values
    policies = {p["metadata"]["name"]: p["spec"] for p in rendering.of_kind("NetworkPolicy")}
    assert policies["iotpipe-default-deny"]["podSelector"] == {}
    expect = {
        "iotpipe-sensor": v["sensor"]["metricsPort"],
        "iotpipe-query": v["query"]["metricsPort"],
        "iotpipe-stream": v["stream"]["metricsPort"],
    }
    kafka_port = v["kafka"]["tlsPort" if v["kafka"]["security"]["enabled"] else "plainPort"]
    for name, port in expect.items():
        spec = policies[name]
        assert port in {p["port"] for p in spec["ingress"][0]["ports"]}, name
        egress_ports = {p["port"] for e in spec["egress"] for p in e.get("ports", [])}
        assert {53, kafka_port} <= egress_ports, name
    api_ports = {p["port"] for p in policies["iotpipe-query"]["ingress"][0]["ports"]}
    assert v["query"]["port"] in api_ports
    namespaces = {
        f["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"]
        for f in policies["iotpipe-query"]["ingress"][0]["from"]
        if "namespaceSelector" in f
    }
    assert namespaces == {v["networkPolicy"]["ingressNamespace"], monitoring_release()["namespace"]}


def monitoring_release() -> Doc:
    return next(r for r in releases("operators") if r["remoteChart"] == "kube-prometheus-stack")


def test_skaffold_builds_the_images_the_chart_runs() -> None:
    config = skaffold()
    artifacts = {a["image"]: a for a in config["build"]["artifacts"]}
    for a in artifacts.values():
        assert (ROOT / a["context"] / a["docker"]["dockerfile"]).is_file(), a
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert {i["repository"] for i in values["images"].values()} == set(artifacts)
    (app,) = releases("iotpipe")
    assert app["chartPath"] == "charts/iotpipe"
    templates = app["setValueTemplates"]
    for key, image in values["images"].items():
        var = image["repository"].replace("-", "_")
        assert templates[f"images.{key}.repository"] == f"{{{{.IMAGE_REPO_{var}}}}}"
        assert templates[f"images.{key}.tag"] == f"{{{{.IMAGE_TAG_{var}}}}}"


def test_skaffold_profiles_and_pinned_operators() -> None:
    for profile, extra in (
        (None, []),
        ("kind", ["iotpipe-kind.yaml"]),
        ("minikube", ["iotpipe-minikube.yaml"]),
    ):
        (app,) = releases("iotpipe", profile)
        files = app["valuesFiles"]
        assert [f.rsplit("/", 1)[1] for f in files] == ["iotpipe-dev.yaml", *extra], profile
        for r in (app, *releases("operators", profile)):
            for f in r.get("valuesFiles", []):
                assert (ROOT / f).is_file(), f
    pins = {r["remoteChart"]: r["version"] for r in releases("operators", "kind")}
    assert pins["oci://quay.io/strimzi-helm/strimzi-kafka-operator"] == "1.2.0"
    assert re.fullmatch(r"2\.5\.\d+", pins["spark-operator"])
    assert {"kube-prometheus-stack", "traefik", "metrics-server"} <= set(pins)
    assert "traefik" in {r["remoteChart"] for r in releases("operators", "minikube")}
    for r in releases("operators", "kind"):
        # Helm repository indexes only (the deprecated strimzi.io/charts index is gone).
        assert r["remoteChart"].startswith("oci://") or r["repo"].startswith("https://"), r
        assert "strimzi.io/charts" not in r.get("repo", ""), r
    readme = (ROOT / "k8s" / "README.md").read_text()
    for chart, version in pins.items():
        name = chart.rsplit("/", 1)[-1]
        assert re.search(rf"\| {re.escape(name)}\b.*\| {re.escape(version)} \|", readme), chart
    forwards = {(f["namespace"], f["resourceName"]) for f in skaffold()["portForward"]}
    assert ("monitoring", f"{monitoring_release()['name']}-grafana") in forwards
    assert ("iotpipe", "iotpipe-query") in forwards


def test_operators_watch_the_app_namespace() -> None:
    ns = yaml.safe_load((ROOT / "k8s" / "namespace.yaml").read_text())
    name = ns["metadata"]["name"]
    assert ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"
    (app,) = releases("iotpipe")
    assert app["namespace"] == name
    values_of = {
        r["name"]: yaml.safe_load((ROOT / r["valuesFiles"][0]).read_text())
        for r in releases("operators")
    }
    assert values_of["strimzi"]["watchNamespaces"] == [name]
    assert values_of["spark-operator"]["spark"]["jobNamespaces"] == [name]


def test_grafana_sidecar_picks_up_the_dashboard(renderings: dict[str, Rendering]) -> None:
    kps = yaml.safe_load((ROOT / monitoring_release()["valuesFiles"][0]).read_text())
    sidecar = kps["grafana"]["sidecar"]["dashboards"]
    cm = renderings["kind"].one("ConfigMap", "iotpipe-dashboard")
    assert cm["metadata"]["labels"][sidecar["label"]] == sidecar["labelValue"]
    assert sidecar["folderAnnotation"] in cm["metadata"]["annotations"]
    prom = kps["prometheus"]["prometheusSpec"]
    for key in ("serviceMonitor", "podMonitor", "rule"):
        assert prom[f"{key}SelectorNilUsesHelmValues"] is False, key


def test_spark_versions_agree(rendering: Rendering) -> None:
    version = rendering.values["stream"]["sparkVersion"]
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert f"pyspark=={version}" in pyproject["project"]["optional-dependencies"]["stream"]
    pom = (ROOT / "docker" / "stream" / "pom.xml").read_text()
    assert f"<spark.version>{version}</spark.version>" in pom
    dockerfile = (ROOT / "docker" / "stream" / "Dockerfile").read_text()
    bases = re.findall(r"^FROM apache/spark:(\S+)", dockerfile, re.M)
    assert bases and all(b.startswith(f"{version}-scala2.13-java17-python3") for b in bases)
