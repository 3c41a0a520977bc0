"""Session fixtures of the offline Kubernetes checks: the chart is rendered once per values set.

The tools come from `make tools` (.tools/: helm, kubectl, kubernetes-validate, checkov, hadolint,
jsonschema; promtool from Debian's `prometheus` package); a missing tool fails the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from k8s_support import ROOT, VALUE_SETS, Rendering, render

sys.path.insert(0, str(ROOT / "services"))
sys.path.insert(0, str(ROOT / "k8s"))


@pytest.fixture(scope="session")
def renderings() -> dict[str, Rendering]:
    return {name: render(name) for name in VALUE_SETS}


@pytest.fixture(scope="session", params=sorted(VALUE_SETS))
def rendering(request: pytest.FixtureRequest, renderings: dict[str, Rendering]) -> Rendering:
    return renderings[request.param]


@pytest.fixture(scope="session")
def manifests_dir(
    tmp_path_factory: pytest.TempPathFactory, renderings: dict[str, Rendering]
) -> Path:
    """Every rendering written out, one file per values set (for checkov and friends)."""
    folder = tmp_path_factory.mktemp("rendered")
    for name, r in renderings.items():
        (folder / f"{name}.yaml").write_text(r.text)
    return folder
