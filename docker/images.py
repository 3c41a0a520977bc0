"""`make images` / `make images-down`: the three images, built with the chart's names and tags.

Uses the engine at DOCKER_HOST when set; otherwise starts a private dockerd (own socket and data
root under the machine cache, no bridge, no iptables: the host's network is left alone). Base
images that cannot be pulled are replaced by local stand-ins built from Debian packages, tagged
with the names the Dockerfiles use, so the Dockerfiles build unchanged. Nothing is ever pushed.
"""

from __future__ import annotations

import argparse
import ctypes
import fcntl
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("IOTPIPE_DOCKER_CACHE") or Path.home() / ".cache/iotpipe/docker")
DOCKERFILES = {
    "sensors": ROOT / "docker/sensors.Dockerfile",
    "query": ROOT / "docker/query.Dockerfile",
    "stream": ROOT / "docker/stream/Dockerfile",
}
STANDINS = ROOT / "docker/standins"
STANDIN_LABEL = "iotpipe.standin"
# Debian bookworm packages of each stand-in's root file system.
STANDIN_PACKAGES = {
    "python": ["python3.11", "python3.11-venv", "ca-certificates"],
    "maven": ["maven", "openjdk-17-jdk-headless", "ca-certificates"],
    "spark": ["openjdk-17-jre-headless", "python3", "python3-pip", "tini", "procps", "bash",
              "ca-certificates"],
}
PULL_TIMEOUT_S = 60
START_TIMEOUT_S = 90


class ImageError(RuntimeError):
    """A step failed; the message says which and shows the tool's last lines."""


def _tail(text: str, lines: int = 30) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


class Engine:
    """A Docker engine: DOCKER_HOST's, or a private dockerd this process starts and stops."""

    def __init__(self, cache: Path = CACHE) -> None:
        self.cache = cache
        self.run_dir = cache / "run"
        self.pidfile = self.run_dir / "dockerd.pid"
        self.socket = self.run_dir / "docker.sock"
        self.host = os.environ.get("DOCKER_HOST") or f"unix://{self.socket}"
        self.private = "DOCKER_HOST" not in os.environ
        self.started = False
        self.pid: int | None = None

    def env(self) -> dict[str, str]:
        # the classic builder takes a local image for FROM (BuildKit would look it up remotely)
        return {**os.environ, "DOCKER_HOST": self.host, "DOCKER_BUILDKIT": "0"}

    def docker(self, *args: str, timeout: float = 600, check: bool = True,
               ) -> subprocess.CompletedProcess[str]:
        try:
            done = subprocess.run(["docker", *args], capture_output=True, text=True,
                                  env=self.env(), timeout=timeout, stdin=subprocess.DEVNULL)
        except subprocess.TimeoutExpired as e:
            raise ImageError(f"docker {' '.join(args[:3])}: no answer in {timeout:.0f} s") from e
        if check and done.returncode != 0:
            raise ImageError(f"docker {' '.join(args[:3])} failed:\n"
                             f"{_tail(done.stdout + done.stderr)}")
        return done

    def answers(self) -> bool:
        return self.docker("version", timeout=20, check=False).returncode == 0

    def start(self, tied: bool = False) -> Engine:
        """Reuse an answering engine; otherwise start the private one and wait for it.
        `tied`: the kernel stops the engine when this process dies, however it dies."""
        if self.answers():
            return self
        if not self.private:
            raise ImageError(f"DOCKER_HOST={self.host} does not answer `docker version`")
        if shutil.which("dockerd") is None:
            raise ImageError("dockerd not found: `make images-engine` installs Debian's docker.io")
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with (self.cache / "engine.lock").open("w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # one dockerd per data root
            if self.answers():
                return self
            self._spawn(tied)
        return self

    def _spawn(self, tied: bool) -> None:
        with (self.cache / "dockerd.log").open("ab") as log:
            proc = subprocess.Popen(
                ["dockerd", "--host", self.host, "--data-root", str(self.cache / "data"),
                 "--exec-root", str(self.run_dir / "exec"), "--pidfile", str(self.pidfile),
                 "--bridge=none", "--iptables=false", "--log-level=warn"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True,
                preexec_fn=_die_with_parent if tied else None)
        self.pid, self.started = proc.pid, True
        deadline = time.monotonic() + START_TIMEOUT_S
        while not self.answers():
            if proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                text = (self.cache / "dockerd.log").read_text(errors="replace")
                raise ImageError(f"dockerd did not come up:\n{_tail(text)}")
            time.sleep(0.5)

    def stop(self) -> None:
        """Stop the private dockerd (found by its pid file) and its containerd; bounded."""
        if not self.private:
            return
        try:
            pid = self.pid or int(self.pidfile.read_text())
        except (OSError, ValueError):
            return
        for sig, wait_s in ((signal.SIGTERM, 30.0), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(pid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait_s
            while time.monotonic() < deadline and _alive(pid):
                time.sleep(0.2)
            if not _alive(pid):
                break
        self.pidfile.unlink(missing_ok=True)
        self.pid, self.started = None, False

    def has_image(self, ref: str) -> bool:
        return self.docker("image", "inspect", ref, timeout=30, check=False).returncode == 0


def _die_with_parent() -> None:
    PR_SET_PDEATHSIG = 1
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie child of ours counts as gone
        return os.waitpid(pid, os.WNOHANG) == (0, 0)
    except ChildProcessError:
        return True


def base_images(names: list[str]) -> dict[str, str]:
    """Every external FROM reference of the named images' Dockerfiles -> its stand-in's kind."""
    refs: dict[str, str] = {}
    for path in (DOCKERFILES[n] for n in names):
        stages: set[str] = set()
        for m in re.finditer(r"^FROM\s+(\S+)(?:\s+AS\s+(\S+))?", path.read_text(), re.M | re.I):
            if m.group(1) not in stages:
                refs[m.group(1)] = _standin_kind(m.group(1))
            if m.group(2):
                stages.add(m.group(2))
    return refs


def _standin_kind(ref: str) -> str:
    for kind in ("python", "maven", "spark"):
        if f"{kind}:" in ref:
            return kind
    raise ImageError(f"no stand-in for base image {ref}")


def chart_tag() -> str:
    text = (ROOT / "charts/iotpipe/values.yaml").read_text()
    tags = set(re.findall(r"repository: iotpipe-\w+, tag: \"([^\"]+)\"", text))
    if len(tags) != 1:
        raise ImageError(f"charts/iotpipe/values.yaml: expected one image tag, found {tags}")
    return tags.pop()


def ensure_base(engine: Engine, ref: str, kind: str) -> None:
    """The real base when present or pullable; otherwise the stand-in, said in one line."""
    if engine.has_image(ref):
        labels = engine.docker("image", "inspect", "-f", "{{json .Config.Labels}}", ref).stdout
        if STANDIN_LABEL in labels:
            print(f"images: {ref} is a local stand-in (Debian packages), not the upstream image")
        return
    try:
        pulled = engine.docker("pull", "-q", ref, timeout=PULL_TIMEOUT_S, check=False)
    except ImageError:
        pulled = None
    if pulled is not None and pulled.returncode == 0:
        return
    print(f"images: {ref} cannot be pulled; building a local stand-in (Debian packages, "
          "never pushed)")
    build_standin(engine, ref, kind)


def rootfs(kind: str) -> Path:
    """The stand-in's Debian bookworm root file system (mmdebstrap), kept in the cache."""
    tar = CACHE / f"rootfs-{kind}.tar"
    if not tar.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        part = CACHE / f"rootfs-{kind}.part.tar"  # mmdebstrap writes a tar for a .tar name
        done = subprocess.run(
            ["mmdebstrap", "--quiet", "--variant=minbase",
             f"--include={','.join(STANDIN_PACKAGES[kind])}", "bookworm", str(part)],
            capture_output=True, text=True, timeout=1200, stdin=subprocess.DEVNULL)
        if done.returncode != 0:
            raise ImageError(f"mmdebstrap ({kind}) failed:\n{_tail(done.stderr)}")
        part.rename(tar)
    return tar


def build_standin(engine: Engine, ref: str, kind: str) -> None:
    """Root file system -> `docker import` -> the stand-in's Dockerfile (docker/standins)."""
    rootfs_ref = f"iotpipe-standin-rootfs:{kind}"
    if not engine.has_image(rootfs_ref):
        engine.docker("import", str(rootfs(kind)), rootfs_ref, timeout=600)
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
        ctx = Path(tmp)
        # builds inside reach the registries only with this machine's CA bundles
        shutil.copy(STANDINS / f"{kind}.Dockerfile", ctx / "Dockerfile")
        shutil.copy("/etc/ssl/certs/ca-certificates.crt", ctx / "ca-certificates.crt")
        if kind in ("maven", "spark"):
            shutil.copy("/etc/ssl/certs/java/cacerts", ctx / "cacerts")
        if kind == "spark":
            _spark_context(ctx)
        engine.docker("build", "--network", "host", "--label", f"{STANDIN_LABEL}=true",
                      "-t", ref, str(ctx), timeout=1800)


def _spark_context(ctx: Path) -> None:
    """Spark's jars, scripts and Python zips, from the pyspark distribution the venv holds."""
    import pyspark

    dist = Path(pyspark.__file__).parent
    (ctx / "spark/python").mkdir(parents=True)
    for part in ("jars", "bin", "sbin"):
        shutil.copytree(dist / part, ctx / "spark" / part)
    shutil.copytree(dist / "python/lib", ctx / "spark/python/lib")
    shutil.copy(STANDINS / "spark-entrypoint.sh", ctx / "entrypoint.sh")


def build(engine: Engine, names: list[str]) -> dict[str, str]:
    """Build the named images (default: all three); returns name -> image reference."""
    CACHE.mkdir(parents=True, exist_ok=True)
    for ref, kind in base_images(names).items():
        ensure_base(engine, ref, kind)
    tag = chart_tag()
    built = {}
    for name in names:
        ref = f"iotpipe-{name}:{tag}"
        engine.docker("build", "--network", "host", "-f", str(DOCKERFILES[name]), "-t", ref,
                      str(ROOT), timeout=1800)
        print(f"images: built {ref}")
        built[name] = ref
    # untagged build stages are the builder's cache; those unused for a day are stale
    engine.docker("image", "prune", "-f", "--filter", "until=24h", timeout=300)
    return built


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="images", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["build", "down"])
    parser.add_argument("names", nargs="*", help=f"some of {', '.join(DOCKERFILES)}")
    args = parser.parse_args(argv)
    unknown = set(args.names) - set(DOCKERFILES)
    if unknown:
        parser.error(f"unknown image(s): {', '.join(sorted(unknown))}")
    engine = Engine()
    try:
        if args.action == "down":
            engine.stop()
            return 0
        engine.start()
        build(engine, args.names or list(DOCKERFILES))
    except ImageError as e:
        print(f"images: {e}", file=sys.stderr)
        return 1
    if engine.private:
        print(f"images: the engine keeps running for `docker run` (DOCKER_HOST={engine.host}); "
              "`make images-down` stops it")
    return 0


if __name__ == "__main__":
    sys.exit(main())
