"""Shared helpers of the offline Kubernetes checks: paths, tools, rendering, manifest queries."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "iotpipe"
VALUES_DIR = ROOT / "k8s" / "values"
KUBE_VERSION = "1.35.0"
RELEASE = "iotpipe"
NAMESPACE = "iotpipe"
TOOLS = Path(os.environ.get("K8S_TOOLS", ROOT / ".tools"))

# Values sets the chart is rendered with: name -> (values files, --set overrides).
VALUE_SETS: dict[str, tuple[tuple[Path, ...], tuple[str, ...]]] = {
    "default": ((), ()),
    "kind": ((VALUES_DIR / "iotpipe-dev.yaml", VALUES_DIR / "iotpipe-kind.yaml"), ()),
    "minikube": ((VALUES_DIR / "iotpipe-dev.yaml", VALUES_DIR / "iotpipe-minikube.yaml"), ()),
    "secure": (
        (VALUES_DIR / "iotpipe-dev.yaml", VALUES_DIR / "iotpipe-kind.yaml"),
        (
            "kafka.security.enabled=true",
            "common.topicPrefix=lab.",
            "query.apiTokenSecret=iotpipe-api-token",
            "rollups.bucketSeconds=300",
            "rollups.retentionMs=-1",
            "query.rollups=false",
        ),
    ),
}

Doc = dict[str, Any]


def skaffold_config(name: str) -> Doc:
    """One config (module) of skaffold.yaml: `operators` or `iotpipe`."""
    configs = yaml.safe_load_all((ROOT / "skaffold.yaml").read_text())
    (config,) = [c for c in configs if c["metadata"]["name"] == name]
    return config


def releases(module: str, profile: str | None = None) -> list[Doc]:
    """The helm releases a skaffold module deploys, with a profile's JSON patches applied."""
    config = skaffold_config(module)
    rel = config["deploy"]["helm"]["releases"]
    for p in config.get("profiles", []):
        if p["name"] != profile:
            continue
        for patch in p["patches"]:
            assert patch["op"] == "add", patch
            *parents, last = patch["path"].strip("/").split("/")
            node: Any = config
            for key in parents:
                node = node[int(key)] if isinstance(node, list) else node[key]
            node.insert(len(node) if last == "-" else int(last), patch["value"])
    return rel


def tool(name: str) -> Path:
    """A binary installed by `make tools`; a missing one fails the test (it never skips)."""
    for candidate in (TOOLS / "bin" / name, TOOLS / "venv" / "bin" / name):
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return candidate
    if name == "promtool":
        found = subprocess.run(["sh", "-c", "command -v promtool"], capture_output=True, text=True)
        if found.returncode == 0:
            return Path(found.stdout.strip())
    raise AssertionError(f"{name} not found under {TOOLS}: run `make tools` first")


def run(args: list[str | Path], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, cwd=ROOT, timeout=600, **kwargs
    )


def helm_args(value_set: str) -> list[str | Path]:
    files, sets = VALUE_SETS[value_set]
    args: list[str | Path] = []
    for f in files:
        args += ["-f", f]
    for s in sets:
        args += ["--set", s]
    return args


@dataclass(frozen=True)
class Rendering:
    """One `helm template` output: the raw text and its documents."""

    name: str
    text: str
    docs: tuple[Doc, ...]

    def of_kind(self, kind: str) -> list[Doc]:
        return [d for d in self.docs if d["kind"] == kind]

    def one(self, kind: str, name: str) -> Doc:
        found = [d for d in self.of_kind(kind) if d["metadata"]["name"] == name]
        assert len(found) == 1, f"expected one {kind}/{name} in {self.name}, found {len(found)}"
        return found[0]

    @property
    def values(self) -> Doc:
        """The effective values (chart defaults merged with the set's files and overrides)."""
        merged = yaml.safe_load((CHART / "values.yaml").read_text())
        files, sets = VALUE_SETS[self.name]
        for f in files:
            merged = deep_merge(merged, yaml.safe_load(f.read_text()))
        for s in sets:
            key, value = s.split("=", 1)
            merged = deep_merge(merged, nest(key.split("."), yaml.safe_load(value)))
        return merged


def render(value_set: str, *overrides: str) -> Rendering:
    """The chart rendered with a values set (and more `--set` overrides)."""
    result = run(
        [
            tool("helm"),
            "template",
            RELEASE,
            CHART,
            "--namespace",
            NAMESPACE,
            "--kube-version",
            KUBE_VERSION,
            *helm_args(value_set),
            *(arg for o in overrides for arg in ("--set", o)),
        ]
    )
    assert result.returncode == 0, result.stderr
    docs = tuple(d for d in yaml.safe_load_all(result.stdout) if d)
    return Rendering(value_set, result.stdout, docs)


def deep_merge(base: Any, over: Any) -> Any:
    if isinstance(base, dict) and isinstance(over, dict):
        return {**base, **{k: deep_merge(base.get(k), v) for k, v in over.items()}}
    return over


def nest(keys: list[str], value: Any) -> Doc:
    return {keys[0]: nest(keys[1:], value) if len(keys) > 1 else value}


def pod_specs(r: Rendering) -> Iterator[tuple[str, Doc, Doc]]:
    """(name, pod template metadata, pod spec) of every workload with a pod template."""
    for d in r.docs:
        template = (
            d.get("spec", {}).get("template")
            if d["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
            else None
        )
        if template:
            yield f"{d['kind']}/{d['metadata']['name']}", template["metadata"], template["spec"]


def containers(spec: Doc) -> list[Doc]:
    return [*spec.get("initContainers", []), *spec["containers"]]


def env_of(container: Doc) -> dict[str, str]:
    return {e["name"]: e.get("value", "") for e in container.get("env", [])}


def matches(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return bool(selector) and all(labels.get(k) == v for k, v in selector.items())


def spark_roles(r: Rendering) -> Iterator[tuple[str, Doc, Doc]]:
    """(role, role spec, SparkApplication) for the driver and executors of each app."""
    for app in r.of_kind("SparkApplication"):
        for role in ("driver", "executor"):
            yield role, app["spec"][role], app
