"""The chart against a real Kubernetes API server (built by `make apiserver`) and etcd.

One kube-apiserver serves every values set: the pinned CRDs are installed, then each set's
rendering is applied with a server-side, strict dry run (admission, defaulting, CRD structural
schemas, restricted Pod Security) and installed and upgraded with helm. There is no controller
manager or scheduler, so nothing runs: helm waits for hooks only.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from crd_files import crd_dir
from k8s_support import CHART, ROOT, VALUE_SETS, helm_args, tool

from iotpipe.localstack.kafka_broker import free_port

TOKEN = "iotpipe-test-admin-token"
READY_S = 120


@dataclass(frozen=True)
class Cluster:
    kubeconfig: Path
    env: dict[str, str]

    def run(self, *args: str | Path, stdin: str | None = None) -> str:
        result = subprocess.run(
            [str(a) for a in args],
            input=stdin,
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=self.env,
            timeout=300,
        )
        command = " ".join(str(a) for a in args[3:6])
        assert result.returncode == 0, f"{command}: {result.stderr[-3000:]}"
        return result.stdout

    def kubectl(self, *args: str | Path, stdin: str | None = None) -> str:
        return self.run(tool("kubectl"), "--kubeconfig", self.kubeconfig, *args, stdin=stdin)

    def helm(self, *args: str | Path) -> str:
        return self.run(tool("helm"), "--kubeconfig", self.kubeconfig, *args)


def start(args: list[str | Path], log: Path) -> subprocess.Popen[bytes]:
    """In its own session, so the teardown ends it and nothing else."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            [str(a) for a in args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_until(what: str, ready: object, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + READY_S
    while time.monotonic() < deadline:
        assert proc.poll() is None, f"{what} exited:\n{log.read_text()[-3000:]}"
        try:
            if ready():
                return
        except OSError:
            pass
        time.sleep(0.5)
    raise AssertionError(f"{what} not ready in {READY_S}s:\n{log.read_text()[-3000:]}")


def etcd_healthy(url: str) -> bool:
    with urllib.request.urlopen(f"{url}/health", timeout=5) as r:
        return b'"health":"true"' in r.read()


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("apiserver")
    client, peer, secure = free_port(), free_port(), free_port()
    etcd_url = f"http://127.0.0.1:{client}"
    etcd = start(
        [
            "etcd", "--data-dir", work / "etcd", "--name", "test",
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer}",
            "--initial-cluster", f"test=http://127.0.0.1:{peer}",
        ],
        work / "etcd.log",
    )
    procs = [etcd]
    try:
        wait_until("etcd", lambda: etcd_healthy(etcd_url), etcd, work / "etcd.log")
        key = work / "sa.key"
        subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True,
                       capture_output=True, timeout=60)
        (work / "tokens.csv").write_text(f'{TOKEN},admin,admin,"system:masters"\n')
        apiserver = start(
            [
                tool("kube-apiserver"), "--etcd-servers", etcd_url,
                "--bind-address", "127.0.0.1", "--advertise-address", "127.0.0.1",
                "--secure-port", str(secure), "--cert-dir", work / "certs",
                "--token-auth-file", work / "tokens.csv", "--authorization-mode", "RBAC",
                "--service-account-issuer", "https://kubernetes.default.svc",
                "--service-account-key-file", key, "--service-account-signing-key-file", key,
                "--service-cluster-ip-range", "10.96.0.0/16",
                # No controller manager keeps the `kubernetes` Service's endpoints here.
                "--endpoint-reconciler-type", "none",
            ],
            work / "apiserver.log",
        )
        procs.append(apiserver)
        kubeconfig = work / "kubeconfig"
        kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "test",
            "clusters": [{"name": "test", "cluster": {
                "server": f"https://127.0.0.1:{secure}", "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "admin"}}],
        }))
        helm_home = work / "helm"
        env = {
            "PATH": os.environ["PATH"], "HOME": str(work),
            "HELM_CACHE_HOME": str(helm_home / "cache"),
            "HELM_CONFIG_HOME": str(helm_home / "config"),
            "HELM_DATA_HOME": str(helm_home / "data"),
        }
        c = Cluster(kubeconfig, env)

        def ready() -> bool:
            done = subprocess.run(
                [str(tool("kubectl")), "--kubeconfig", str(kubeconfig), "get", "--raw", "/readyz"],
                capture_output=True, text=True, timeout=30, env=env,
            )
            return done.stdout.strip() == "ok"

        wait_until("kube-apiserver", ready, apiserver, work / "apiserver.log")
        c.kubectl("apply", "--server-side", "-f", crd_dir())
        wait_until("the CRDs", lambda: crds_established(c), apiserver, work / "apiserver.log")
        yield c
    finally:
        for p in reversed(procs):
            stop(p)


def crds_established(c: Cluster) -> bool:
    crds = yaml.safe_load(c.kubectl("get", "crd", "-o", "yaml"))["items"]
    return bool(crds) and all(
        any(x["type"] == "Established" and x["status"] == "True"
            for x in crd.get("status", {}).get("conditions") or [])
        for crd in crds
    )


def namespace(c: Cluster, name: str) -> None:
    """The app namespace as k8s/namespace.yaml makes it (restricted Pod Security), renamed, with
    the `default` ServiceAccount a controller manager would add (Pods need one)."""
    ns = yaml.safe_load((ROOT / "k8s" / "namespace.yaml").read_text())
    ns["metadata"]["name"] = name
    sa = {"apiVersion": "v1", "kind": "ServiceAccount",
          "metadata": {"name": "default", "namespace": name}}
    c.kubectl("apply", "-f", "-", stdin=yaml.safe_dump_all([ns, sa]))


def test_server_reports_its_real_version(cluster: Cluster) -> None:
    """A `v0.0.0-master` server would fail the chart's kubeVersion check."""
    version = yaml.safe_load(cluster.kubectl("version", "-o", "yaml"))["serverVersion"]
    assert version["gitVersion"].startswith("v1.35.") and version["minor"] == "35"


@pytest.mark.parametrize("value_set", sorted(VALUE_SETS))
def test_chart_applies_installs_and_upgrades(cluster: Cluster, value_set: str) -> None:
    ns = f"iotpipe-{value_set}"
    namespace(cluster, ns)
    rendered = cluster.helm("template", "iotpipe", CHART, "--namespace", ns, *helm_args(value_set))
    applied = cluster.kubectl(
        "apply", "--namespace", ns, "--server-side", "--dry-run=server", "--validate=strict",
        "-f", "-", stdin=rendered,
    )
    kinds = {line.split("/")[0].split(".")[0] for line in applied.splitlines()}
    assert {"kafka", "sparkapplication", "deployment", "servicemonitor"} <= kinds, applied
    release = ("iotpipe", CHART, "--namespace", ns, *helm_args(value_set), "--wait=hookOnly",
               "--timeout", "5m")
    cluster.helm("install", *release)
    cluster.helm("upgrade", *release)
    history = cluster.helm("history", "iotpipe", "--namespace", ns, "-o", "yaml")
    assert [(r["revision"], r["status"]) for r in yaml.safe_load(history)] == [
        (1, "superseded"), (2, "deployed")]
    listed = cluster.kubectl("get", "deployments,kafkas,sparkapplications", "-n", ns, "-o", "name")
    assert "kafka.kafka.strimzi.io/iotpipe" in listed and "deployment.apps/iotpipe-query" in listed
