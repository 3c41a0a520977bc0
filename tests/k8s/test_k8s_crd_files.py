"""Where the CRD schemas come from in a clone anywhere: k8s/crd_files.py, run as `make tools` does.

Each test lays a fresh project (k8s/crd_files.py and its own pins of files made here; the pinned
files kept in the repository only where the test puts them) and serves the pinned files from a
local HTTP server, so the download and its sha256 check run for real.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from k8s_support import ROOT

FILES = {"a-crd.yaml": b"kind: CustomResourceDefinition\n", "b-crd.yaml": b"spec: {}\n"}


@pytest.fixture()
def served(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A folder served on 127.0.0.1 (holding the pinned files) and its base URL."""
    folder = tmp_path / "upstream"
    folder.mkdir()
    for name, data in FILES.items():
        (folder / name).write_bytes(data)
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def clone(tmp_path: Path, base_url: str) -> Path:
    """A project folder with the script and pins of FILES at `base_url`; no k8s/crds in it."""
    project = tmp_path / "clone" / "iotpipe"
    (project / "k8s").mkdir(parents=True)
    shutil.copy(ROOT / "k8s" / "crd_files.py", project / "k8s")
    pins = [f"{n} {hashlib.sha256(d).hexdigest()} {base_url}/{n}" for n, d in FILES.items()]
    (project / "k8s" / "crds.txt").write_text("# test pins\n" + "\n".join(pins) + "\n")
    return project


def fetch(project: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("IOTPIPE_CRD")}
    return subprocess.run(
        [sys.executable, project / "k8s" / "crd_files.py"],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_clone_without_kept_crds_downloads_the_pinned_files(
    tmp_path: Path, served: tuple[Path, str]
) -> None:
    project = clone(tmp_path, served[1])
    result = fetch(project)
    assert result.returncode == 0, result.stderr
    cache = project / ".tools" / "crds"
    assert str(cache) in result.stderr
    assert {p.name: p.read_bytes() for p in cache.iterdir()} == FILES
    # Cached: a second run needs no server.
    assert fetch(project, IOTPIPE_CRD_MIRROR="http://127.0.0.1:9").returncode == 0


def test_a_file_not_matching_its_sha256_is_rejected(
    tmp_path: Path, served: tuple[Path, str]
) -> None:
    folder, url = served
    project = clone(tmp_path, url)
    (folder / "b-crd.yaml").write_bytes(b"spec: {tampered: true}\n")
    result = fetch(project)
    assert result.returncode != 0
    assert "b-crd.yaml has sha256" in result.stderr and "pinned" in result.stderr
    assert sorted(p.name for p in (project / ".tools" / "crds").iterdir()) == ["a-crd.yaml"]


def test_a_mirror_replaces_the_upstream_address(tmp_path: Path, served: tuple[Path, str]) -> None:
    project = clone(tmp_path, "http://127.0.0.1:9/unreachable")
    assert fetch(project).returncode != 0
    result = fetch(project, IOTPIPE_CRD_MIRROR=served[0].as_uri())
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (project / ".tools" / "crds").iterdir()) == sorted(FILES)


def test_crds_kept_in_the_project_are_checked_not_downloaded(
    tmp_path: Path, served: tuple[Path, str]
) -> None:
    project = clone(tmp_path, "http://127.0.0.1:9/unreachable")
    kept = project / "k8s" / "crds"
    shutil.copytree(served[0], kept)
    result = fetch(project)
    assert result.returncode == 0, result.stderr
    assert str(kept) in result.stderr and not (project / ".tools").exists()
    (kept / "a-crd.yaml").write_bytes(b"other version\n")
    result = fetch(project)
    assert result.returncode != 0 and "a-crd.yaml: sha256" in result.stderr


def test_crd_dir_wins_and_is_taken_as_it_is(tmp_path: Path) -> None:
    project = clone(tmp_path, "http://127.0.0.1:9/unreachable")
    dumped = tmp_path / "dumped"
    dumped.mkdir()
    result = fetch(project, IOTPIPE_CRD_DIR=str(dumped))
    assert result.returncode == 0 and str(dumped) in result.stderr, result.stderr
    result = fetch(project, IOTPIPE_CRD_DIR=str(tmp_path / "missing"))
    assert result.returncode != 0 and "is not a folder" in result.stderr
