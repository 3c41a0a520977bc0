"""The dev install fits a laptop: every pod's requests, operators included, fit 4 CPUs / 8 GiB.

App pods come from the rendered dev values (Deployments at their HPA minimum, Strimzi's broker and
entity operator, the Spark driver and executors); operator pods from the requests pinned in their
values files (each listed here must set cpu and memory, or the test fails). docs/kubernetes.md
shows the budget.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from k8s_support import ROOT, Doc, Rendering, containers, pod_specs, releases

NODE_CPU, NODE_MEMORY_MI = 4.0, 8 * 1024
# Kept free for the node's own daemons and one surge pod of a rolling update.
HEADROOM = 0.9
# kubeadm control plane (apiserver 250m, controller-manager 200m, scheduler 100m, etcd 100m/100Mi),
# two CoreDNS (100m/70Mi each) and the CNI (kindnet 100m/50Mi): what kind and minikube run.
CONTROL_PLANE = (0.95, 290.0)
# (values file, key path to a `resources` map, pods or containers using it)
OPERATOR_PODS = {
    "strimzi.yaml": [(("resources",), 1)],
    "spark-operator.yaml": [(("controller", "resources"), 1), (("webhook", "resources"), 1)],
    "kube-prometheus-stack.yaml": [
        (("prometheus", "prometheusSpec", "resources"), 1),
        (("alertmanager", "alertmanagerSpec", "resources"), 1),
        (("prometheusOperator", "resources"), 1),
        # The config reloader runs beside Prometheus and beside Alertmanager.
        (("prometheusOperator", "prometheusConfigReloader", "resources"), 2),
        (("grafana", "resources"), 1),
        (("grafana", "sidecar", "resources"), 2),
        (("kube-state-metrics", "resources"), 1),
        (("prometheus-node-exporter", "resources"), 1),
    ],
    "traefik.yaml": [(("resources",), 1)],
    "metrics-server-kind.yaml": [(("resources",), 1)],
}
# minikube's metrics-server addon (its manifest's requests).
MINIKUBE_ADDONS = (0.1, 200.0)
UNITS = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}


def cpu(q: str | int | float) -> float:
    text = str(q)
    return float(text[:-1]) / 1000 if text.endswith("m") else float(text)


def mebibytes(q: str) -> float:
    """Kubernetes quantities (Mi, Gi) and Spark sizes (m, g: binary units)."""
    number, unit = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", str(q)).groups()
    return float(number) * UNITS[unit]


def requests_of(resources: Doc, where: str) -> tuple[float, float]:
    req = resources.get("requests", {})
    assert "cpu" in req and "memory" in req, f"{where}: no cpu and memory requests"
    return cpu(req["cpu"]), mebibytes(req["memory"])


def operator_requests(profile: str) -> Iterator[tuple[str, float, float]]:
    for release in releases("operators", profile):
        (values_file,) = release["valuesFiles"]
        name = Path(values_file).name
        values = yaml.safe_load((ROOT / values_file).read_text())
        assert name in OPERATOR_PODS, f"{name}: list its pods in OPERATOR_PODS"
        for path, count in OPERATOR_PODS[name]:
            node = values
            for key in path:
                node = node.get(key, {})
            c, m = requests_of(node, f"{name}: {'.'.join(path)}")
            yield f"{release['name']}: {'.'.join(path)}", c * count, m * count


def app_requests(r: Rendering) -> Iterator[tuple[str, float, float]]:
    for name, _, spec in pod_specs(r):
        doc = next(d for d in r.docs if f"{d['kind']}/{d['metadata']['name']}" == name)
        hpa = [h for h in r.of_kind("HorizontalPodAutoscaler")
               if h["spec"]["scaleTargetRef"]["name"] == doc["metadata"]["name"]]
        replicas = hpa[0]["spec"]["minReplicas"] if hpa else doc["spec"].get("replicas", 1)
        for c in containers(spec):
            got = requests_of(c.get("resources", {}), f"{name}/{c['name']}")
            yield f"{name}/{c['name']}", got[0] * replicas, got[1] * replicas
    for pool in r.of_kind("KafkaNodePool"):
        c, m = requests_of(pool["spec"]["resources"], "KafkaNodePool")
        yield "KafkaNodePool", c * pool["spec"]["replicas"], m * pool["spec"]["replicas"]
    entity = r.of_kind("Kafka")[0]["spec"]["entityOperator"]
    for part in ("topicOperator", "userOperator"):
        yield (part, *requests_of(entity[part].get("resources", {}), part))
    for app in r.of_kind("SparkApplication"):
        spec = app["spec"]
        for role, count in (("driver", 1), ("executor", spec["executor"]["instances"])):
            s = spec[role]
            assert "coreRequest" in s and "memoryOverhead" in s, f"{role}: set the requests"
            memory = mebibytes(s["memory"]) + mebibytes(s["memoryOverhead"])
            yield f"spark {role}", cpu(s["coreRequest"]) * count, memory * count


@pytest.mark.parametrize("profile", ["kind", "minikube"])
def test_dev_install_fits_four_cpus_and_eight_gib(
    renderings: dict[str, Rendering], profile: str
) -> None:
    rows = [*operator_requests(profile), *app_requests(renderings[profile])]
    rows.append(("control plane", *CONTROL_PLANE))
    if profile == "minikube":
        rows.append(("metrics-server addon", *MINIKUBE_ADDONS))
    total_cpu = sum(r[1] for r in rows)
    total_mi = sum(r[2] for r in rows)
    table = "\n".join(f"{n}: {c:.2f} CPU, {m:.0f} Mi" for n, c, m in rows)
    assert total_cpu <= NODE_CPU * HEADROOM, f"{total_cpu:.2f} CPUs requested:\n{table}"
    assert total_mi <= NODE_MEMORY_MI * HEADROOM, f"{total_mi:.0f} MiB requested:\n{table}"


def test_spark_pods_request_less_than_a_whole_cpu(renderings: dict[str, Rendering]) -> None:
    """`cores: 1` alone asks a whole CPU per pod; coreRequest keeps the dev executor schedulable."""
    for name in ("kind", "minikube"):
        spec = renderings[name].one("SparkApplication", "iotpipe-stream")["spec"]
        assert cpu(spec["driver"]["coreRequest"]) + cpu(spec["executor"]["coreRequest"]) <= 1
