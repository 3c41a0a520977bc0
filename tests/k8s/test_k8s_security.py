"""checkov on the rendered chart, hadolint and image rules on the Dockerfiles."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from k8s_support import ROOT, run, tool

DOCKERFILES = sorted([*ROOT.glob("docker/*.Dockerfile"), *ROOT.glob("docker/*/Dockerfile")])
CHECKOV_CONFIG = ROOT / "k8s" / "checkov.yaml"


def test_checkov_passes_with_the_documented_skips(manifests_dir: Path) -> None:
    result = run(
        [tool("checkov"), "--config-file", CHECKOV_CONFIG, "-d", manifests_dir, "-o", "json"]
    )
    reports = json.loads(result.stdout)
    reports = reports if isinstance(reports, list) else [reports]
    failed = [
        f"{c['check_id']} {c['resource']}" for r in reports for c in r["results"]["failed_checks"]
    ]
    passed = sum(len(r["results"]["passed_checks"]) for r in reports)
    assert not failed, "\n".join(failed)
    assert result.returncode == 0 and passed > 100, result.stderr[-2000:]
    skips = yaml.safe_load(CHECKOV_CONFIG.read_text())["skip-check"]
    docs = (ROOT / "docs" / "kubernetes.md").read_text()
    assert len(skips) <= 6 and all(s in docs for s in skips), "document every checkov skip"


def test_hadolint_is_clean() -> None:
    assert len(DOCKERFILES) == 3
    result = run([tool("hadolint"), *DOCKERFILES])
    assert result.returncode == 0, result.stdout + result.stderr


def stages(dockerfile: Path) -> list[list[str]]:
    """Instructions (continuations joined) grouped by build stage."""
    text = re.sub(r"\\\n", " ", dockerfile.read_text())
    out: list[list[str]] = []
    for line in (ln.strip() for ln in text.splitlines()):
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            out.append([])
        out[-1].append(line)
    return out


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name + "/" + p.name)
def test_image_rules(dockerfile: Path) -> None:
    all_stages = stages(dockerfile)
    names = {s[0].split()[-1] for s in all_stages if " AS " in s[0].upper()}
    for stage in all_stages:
        image = stage[0].split()[1]
        if image in names:
            continue
        assert re.search(r":[\w.-]*\d[\w.-]*$", image) and not image.endswith(":latest"), image
    final = all_stages[-1]
    users = [i.split()[1] for i in final if i.upper().startswith("USER ")]
    assert users and users[-1].split(":")[0] not in ("root", "0"), "final stage must not be root"
    runs = " ".join(i for i in final if i.upper().startswith("RUN "))
    for build_tool in ("apt-get", "apk ", "pip ", "pip3", "mvn", "gcc", "make "):
        assert build_tool not in runs, f"{build_tool} in the final stage"


def test_dockerignore_keeps_the_context_small() -> None:
    rules = (ROOT / ".dockerignore").read_text().split()
    assert rules[rules.index("*")] == "*" and "!services/" in rules and "!pyproject.toml" in rules
