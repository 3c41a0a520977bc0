"""The CRD schemas the chart is checked against, pinned in k8s/crds.txt (file, sha256, address).

Where they come from, first match wins: $IOTPIPE_CRD_DIR (any folder of CRDs, e.g. dumped from a
cluster; taken as it is), else `k8s/crds` (the pinned files, kept in the repository so that a
clone needs no network for them), else `.tools/crds`, which `python3 k8s/crd_files.py` (run by
`make tools`) fills by downloading the pinned files. Pinned files
are always checked against their sha256, so a folder of other versions fails loudly instead of
validating the chart against the wrong schemas. $IOTPIPE_CRD_MIRROR (a base URL, `file://` too)
replaces the upstream addresses: files are fetched from `<mirror>/<file>`.
Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import hashlib
import os
import sys
import urllib.request
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
PINS = ROOT / "k8s" / "crds.txt"
VENDORED = ROOT / "k8s" / "crds"
CACHE = ROOT / ".tools" / "crds"
TIMEOUT_S = 60


class Pin(NamedTuple):
    file: str
    sha256: str
    url: str


def pins() -> list[Pin]:
    lines = PINS.read_text().splitlines()
    return [Pin(*line.split()) for line in lines if line.strip() and not line.startswith("#")]


def crd_dir() -> Path:
    """The folder the tests read CRDs from (see the module docstring for the order)."""
    given = os.environ.get("IOTPIPE_CRD_DIR")
    if given:
        return Path(given)
    return VENDORED if VENDORED.is_dir() else CACHE


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def mismatches(folder: Path) -> list[str]:
    """Pinned files missing from the folder or differing from their sha256."""
    bad = []
    for pin in pins():
        path = folder / pin.file
        if not path.is_file():
            bad.append(f"{pin.file}: missing")
        elif (got := sha256(path)) != pin.sha256:
            bad.append(f"{pin.file}: sha256 {got}, pinned {pin.sha256}")
    return bad


def download(pin: Pin, folder: Path, mirror: str | None) -> None:
    """Fetch one pinned file; it lands under its name only when its sha256 matches."""
    url = f"{mirror.rstrip('/')}/{pin.file}" if mirror else pin.url
    part = folder / f"{pin.file}.part"
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:
            part.write_bytes(response.read())
    except OSError as e:
        part.unlink(missing_ok=True)
        raise SystemExit(
            f"crds: cannot download {url}: {e}\n  Point IOTPIPE_CRD_DIR at a folder of the CRDs, "
            f"put them in {VENDORED}, or set IOTPIPE_CRD_MIRROR to a copy (see {PINS.name})."
        ) from e
    got = sha256(part)
    if got != pin.sha256:
        part.unlink()
        raise SystemExit(f"crds: {url} has sha256 {got}, pinned {pin.sha256}; not used")
    part.replace(folder / pin.file)


def ensure() -> Path:
    """Make sure the CRD folder is ready (downloading into .tools/crds when needed); return it."""
    folder = crd_dir()
    if os.environ.get("IOTPIPE_CRD_DIR"):
        if not folder.is_dir():
            raise SystemExit(f"crds: IOTPIPE_CRD_DIR={folder} is not a folder")
        return folder
    if folder == CACHE:
        CACHE.mkdir(parents=True, exist_ok=True)
        mirror = os.environ.get("IOTPIPE_CRD_MIRROR")
        for pin in pins():
            path = CACHE / pin.file
            if not (path.is_file() and sha256(path) == pin.sha256):
                download(pin, CACHE, mirror)
    bad = mismatches(folder)
    if bad:
        raise SystemExit(f"crds: {folder} does not hold the pinned CRDs:\n  " + "\n  ".join(bad))
    return folder


if __name__ == "__main__":
    print(f"CRD schemas: {ensure()}", file=sys.stderr)
