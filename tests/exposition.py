"""`promtool check metrics` on an exporter's exposition text (promtool comes with `make tools`)."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def promtool_check(text: str) -> None:
    tools = Path(os.environ.get("K8S_TOOLS", ROOT / ".tools"))
    binary = shutil.which("promtool") or shutil.which("promtool", path=str(tools / "bin"))
    assert binary, "promtool not found: run `make tools` (Debian package prometheus)"
    done = subprocess.run([binary, "check", "metrics"], input=text, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0 and not done.stdout.strip(), done.stdout + done.stderr
