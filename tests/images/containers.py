"""Run an image the way the chart runs it: the rendered pod's user, security context, writable
mounts, command and env (with the test's broker, topics and free ports instead of the cluster's)."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from images import Engine
from k8s.k8s_support import Rendering, env_of

Doc = dict[str, Any]
GRACE_S = 30  # Kubernetes' terminationGracePeriodSeconds when a pod sets none


@dataclass(frozen=True)
class ChartContainer:
    """What the chart says about one container: image, pod and container security, mounts."""

    image: str
    pod_security: Doc
    container: Doc
    volumes: dict[str, Doc]
    args: list[str] = field(default_factory=list)
    grace_s: int = GRACE_S  # the pod's terminationGracePeriodSeconds: SIGTERM, then SIGKILL

    @classmethod
    def deployment(cls, r: Rendering, name: str) -> ChartContainer:
        pod = r.one("Deployment", name)["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        return cls(container["image"], pod["securityContext"], container,
                   {v["name"]: v for v in pod.get("volumes", [])},
                   grace_s=pod.get("terminationGracePeriodSeconds", GRACE_S))

    @classmethod
    def spark_driver(cls, r: Rendering, name: str, master: str) -> ChartContainer:
        """The driver pod as the Spark Operator starts it (the image's entry point in `driver`
        mode running spark-submit on the main file), with a local master for the test."""
        spec = r.one("SparkApplication", name)["spec"]
        driver = spec["driver"]
        confs = [a for k, v in spec.get("sparkConf", {}).items() for a in ("--conf", f"{k}={v}")]
        args = ["driver", "--master", master, *confs, spec["mainApplicationFile"]]
        return cls(spec["image"], driver["podSecurityContext"], driver,
                   {v["name"]: v for v in spec.get("volumes", [])}, args,
                   driver.get("terminationGracePeriodSeconds", GRACE_S))

    def run_args(self, name: str, env: dict[str, str], binds: dict[str, Path]) -> list[str]:
        """`docker run` arguments; emptyDir volumes become tmpfs mounts, others `binds`."""
        pod, sc = self.pod_security, self.container["securityContext"]
        args = ["run", "--rm", "--name", name, "--network", "host",
                "--user", f"{pod['runAsUser']}:{pod['runAsGroup']}",
                "--group-add", str(pod["fsGroup"])]
        if sc.get("readOnlyRootFilesystem"):
            args.append("--read-only")
        if sc.get("allowPrivilegeEscalation") is False:
            args += ["--security-opt", "no-new-privileges"]
        for cap in sc.get("capabilities", {}).get("drop", []):
            args += ["--cap-drop", cap]
        for mount in self.container.get("volumeMounts", []):
            if "emptyDir" in self.volumes[mount["name"]]:
                args += ["--tmpfs", f"{mount['mountPath']}:rw,exec,mode=1777"]
            else:
                args += ["-v", f"{binds[mount['name']]}:{mount['mountPath']}"]
        for key, value in (env_of(self.container) | env).items():
            args += ["-e", f"{key}={value}"]
        command = self.container.get("command", [])
        if command:
            args += ["--entrypoint", command[0]]
        return [*args, self.image, *command[1:], *self.args]


class Container:
    """A container in the foreground of `docker run`: its log is a file, its exit code ours."""

    def __init__(self, engine: Engine, spec: ChartContainer, name: str, env: dict[str, str],
                 log: Path, binds: dict[str, Path] | None = None) -> None:
        self.engine, self.name, self.log, self.grace_s = engine, name, log, spec.grace_s
        self.exit_code: int | None = None
        with log.open("wb") as out:
            self.proc = subprocess.Popen(
                ["docker", *spec.run_args(name, env, binds or {})], env=engine.env(),
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def running(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int:
        """SIGTERM, as Kubernetes stops a pod (SIGKILL after the pod's grace period); returns
        the container's exit code."""
        self.engine.docker("stop", "-t", str(self.grace_s), self.name,
                           timeout=self.grace_s + 30, check=False)
        try:
            self.exit_code = self.proc.wait(30)
            return self.exit_code
        finally:
            self.remove()

    def remove(self) -> None:
        self.engine.docker("rm", "-f", self.name, timeout=60, check=False)
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def error_lines(self) -> list[str]:
        return [line for line in self.text().splitlines() if "ERROR" in line]
