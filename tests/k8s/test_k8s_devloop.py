"""The dev loop: operators installed once, only the app in `skaffold dev`, named kube contexts."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from k8s_support import ROOT, releases, skaffold_config

CLUSTER_TOOLS = ("kubectl", "skaffold", "helm")
CONTEXTS = {"kind": "kind-iotpipe", "minikube": "minikube"}


def make_dry_run(*args: str) -> list[str]:
    result = subprocess.run(
        ["make", "-n", *args], capture_output=True, text=True, cwd=ROOT, timeout=120
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.splitlines()


def test_the_dev_loop_deploys_only_the_app() -> None:
    for profile in (None, "kind", "minikube"):
        (app,) = releases("iotpipe", profile)
        assert app["chartPath"] == "charts/iotpipe"
        operators = releases("operators", profile)
        assert operators and all("remoteChart" in r and r["wait"] for r in operators), profile


@pytest.mark.parametrize("module", ["operators", "iotpipe"])
def test_helm_waits_long_enough_for_a_first_pull(module: str) -> None:
    deploy = skaffold_config(module)["deploy"]
    for verb in ("install", "upgrade"):
        (timeout,) = [f for f in deploy["helm"]["flags"][verb] if f.startswith("--timeout=")]
        assert int(re.fullmatch(r"--timeout=(\d+)m", timeout)[1]) >= 10, (module, verb)
    assert deploy["statusCheckDeadlineSeconds"] >= 600


@pytest.mark.parametrize("kind", sorted(CONTEXTS))
def test_every_cluster_command_names_its_context(kind: str) -> None:
    lines = make_dry_run("cluster-up", "dev", f"CLUSTER_KIND={kind}")
    context = CONTEXTS[kind]
    commands = [ln for ln in lines if ln.split(" ", 1)[0] in CLUSTER_TOOLS]
    assert len(commands) == 3, lines
    for line in commands:
        assert f"--kube-context {context}" in line or f"--context {context}" in line, line
    assert any(re.match(r"skaffold run -m operators --profile \S+ ", ln) for ln in commands)
    assert any(re.match(r"skaffold dev -m iotpipe --profile \S+ ", ln) for ln in commands)


@pytest.mark.parametrize(
    ("version", "ok"), [("v2.16.1", False), ("v2.17.0", True), ("v2.21.3", True)]
)
def test_make_dev_checks_the_skaffold_version(tmp_path: Path, version: str, ok: bool) -> None:
    fake = tmp_path / "skaffold"
    fake.write_text(f"#!/bin/sh\necho {version}\n")
    fake.chmod(0o755)
    result = subprocess.run(
        ["make", "-s", "skaffold-version"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=120,
        env={"PATH": f"{tmp_path}:/usr/bin:/bin"},
    )
    assert (result.returncode == 0) is ok, result.stderr
    if not ok:
        assert f"skaffold {version[1:]} is too old" in result.stderr
        assert ">= 2.17.0" in result.stderr
