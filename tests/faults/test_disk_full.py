"""A full disk under the checkpoint or broker data folder: one clear line at start-up.

As root (CI here), the folders live on a real 64 KiB tmpfs filled to the last byte. Without
root, the probe file each start-up check writes is a link to /dev/full, whose writes fail with
the same ENOSPC a full file system gives.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from iotpipe.localstack.kafka_broker import BrokerError, KafkaBroker, free_port

NO_SPACE = "No space left on device"


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "tiny"
    mount.mkdir()
    mounted = os.geteuid() == 0 and subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)],
        capture_output=True, check=False, timeout=30).returncode == 0
    try:
        (mount / "ckpt").mkdir()
        (mount / "kafka").mkdir()
        if mounted:
            with open(mount / "filler", "wb", buffering=0) as f:  # fill it to the last byte
                try:
                    while True:
                        f.write(b"\0" * 512)
                except OSError as e:
                    assert e.strerror == NO_SPACE
        else:  # (said in the run's summary: only the write probes meet a full disk)
            warnings.warn("no tmpfs could be mounted (not root?): a full disk is simulated "
                          "by write probes linked to /dev/full", stacklevel=1)
            (mount / "ckpt" / ".write-probe").symlink_to("/dev/full")
            (mount / "kafka" / ".write-probe").symlink_to("/dev/full")
        yield mount
    finally:
        if mounted:
            subprocess.run(["umount", str(mount)], check=True, timeout=30)


@pytest.mark.faults
def test_full_disk_fails_fast_with_one_clear_line(full_disk: Path) -> None:
    ckpt = full_disk / "ckpt"
    done = subprocess.run([sys.executable, "-m", "iotpipe.stream"], capture_output=True,
                          text=True, timeout=60, check=False,
                          env={"PATH": "/usr/bin:/bin", "IOTPIPE_CHECKPOINT_DIR": str(ckpt)})
    assert done.returncode == 1
    assert done.stderr.strip().splitlines() == [
        f"iotpipe stream: IOTPIPE_CHECKPOINT_DIR={ckpt}: not writable: {NO_SPACE}"]
    with pytest.raises(BrokerError, match=rf"data folder .* is not writable: {NO_SPACE}"):
        KafkaBroker(full_disk / "kafka", port=free_port()).start()
