"""The chart starts each service with the same command the local stack runs."""

from __future__ import annotations

import json
import re

from k8s_support import ROOT, Rendering, containers, pod_specs

from iotpipe.localstack.processes import SERVICE_COMMANDS

IMAGE_ROOT = "/opt/iotpipe/services/"


def expected_commands() -> dict[str, tuple[str, ...]]:
    return dict(SERVICE_COMMANDS)


def chart_commands(r: Rendering) -> dict[str, set[tuple[str, ...]]]:
    found: dict[str, set[tuple[str, ...]]] = {}
    for _, meta, spec in pod_specs(r):
        component = meta["labels"]["app.kubernetes.io/component"]
        service = {"sensor": "sensors"}.get(component, component)
        for c in containers(spec):
            found.setdefault(service, set()).add(tuple(c["command"]))
    return found


def test_deployments_run_the_local_commands(renderings: dict[str, Rendering]) -> None:
    expected = expected_commands()
    for r in renderings.values():
        found = chart_commands(r)
        assert set(found) == {"sensors", "query"}, found
        for service, commands in found.items():
            assert commands == {expected[service]}, f"{r.name}: {service}"


def test_stream_main_file_is_the_local_module(renderings: dict[str, Rendering]) -> None:
    _, flag, module = expected_commands()["stream"]
    assert flag == "-m"
    main = renderings["default"].of_kind("SparkApplication")[0]["spec"]["mainApplicationFile"]
    assert main == f"local://{IMAGE_ROOT}{module.replace('.', '/')}/__main__.py"
    assert (ROOT / "services" / module.replace(".", "/")).is_dir()
    dockerfile = (ROOT / "docker" / "stream" / "Dockerfile").read_text()
    assert re.search(rf"^COPY services/ {IMAGE_ROOT}$", dockerfile, re.M)
    assert re.search(rf"PYTHONPATH={IMAGE_ROOT.rstrip('/')}[:\s]", dockerfile)


def test_images_default_to_the_same_commands() -> None:
    expected = expected_commands()
    for service in ("sensors", "query"):
        text = (ROOT / "docker" / f"{service}.Dockerfile").read_text()
        cmd = re.findall(r"^CMD (\[.*\])$", text, re.M)[-1]
        assert tuple(json.loads(cmd)) == expected[service], service
