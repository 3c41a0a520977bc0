"""The `helm test` hook reaches what it checks: Services, ports, network policies, the token.

The script itself runs against a real gunicorn and the stream exporter in
tests/integration/test_gunicorn_server.py.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from k8s_support import CHART, Rendering, env_of, matches


def test_helm_test_pod_reaches_the_services(rendering: Rendering) -> None:
    pod = rendering.one("Pod", "iotpipe-helm-test")
    assert pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = pod["spec"]
    (c,) = spec["containers"]
    env = env_of(c)
    labels = pod["metadata"]["labels"]
    policies = {p["metadata"]["name"]: p["spec"] for p in rendering.of_kind("NetworkPolicy")}
    targets = [("IOTPIPE_TEST_API", "iotpipe-query")]
    if rendering.values["stream"]["enabled"]:
        targets.append(("IOTPIPE_TEST_STREAM_METRICS", "iotpipe-stream"))
    for var, policy in targets:
        url = urlsplit(env[var])
        svc = rendering.one("Service", url.hostname)
        (port,) = [p for p in svc["spec"]["ports"] if p["port"] == url.port]
        allowed = [
            f["podSelector"]["matchLabels"]
            for rule in policies[policy]["ingress"]
            for f in rule["from"]
            if "podSelector" in f
        ]
        assert any(matches(sel, labels) for sel in allowed), (var, policy)
        assert port["targetPort"] in ("http", "metrics"), var
    stream_svc = rendering.one("Service", "iotpipe-stream-metrics")["spec"]["selector"]
    (monitor,) = [m for m in rendering.of_kind("PodMonitor") if m["metadata"]["name"].endswith(
        "stream")]
    assert stream_svc == monitor["spec"]["selector"]["matchLabels"]
    token = bool(rendering.values["query"]["apiTokenSecret"])
    assert ("IOTPIPE_API_TOKEN_FILE" in env) is token
    volumes = {v["name"]: v for v in spec["volumes"]}
    script = rendering.one("ConfigMap", volumes["script"]["configMap"]["name"])
    assert script["data"]["helm-test.py"] == (CHART / "files" / "helm-test.py").read_text()
    assert c["command"][-1].endswith("/helm-test.py")
