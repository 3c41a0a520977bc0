"""Things that must agree across files: README vs settings, versions, OpenAPI vs the app."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml

from iotpipe.core.settings import ENV_VARS, Settings
from iotpipe.query.aggregate import METRICS
from iotpipe.query.app import create_app

ROOT = Path(__file__).resolve().parents[2]


def test_readme_opens_with_the_two_commands() -> None:
    lines = (ROOT / "README.md").read_text().splitlines()
    block = lines[lines.index("```sh") + 1: lines.index("```", lines.index("```sh") + 1)]
    assert [line.split("#")[0].strip() for line in block] == ["make run", "make test"]


def test_readme_documents_every_setting_with_its_default_and_help() -> None:
    readme = (ROOT / "README.md").read_text()
    for var in ENV_VARS.values():
        default = f"`{var.default}`" if var.default else "(empty)"
        assert f"| `{var.name}` | {default} | {var.help} |" in readme, var.name


def test_spark_connector_version_equals_the_pyspark_pin() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pin = next(d for d in pyproject["project"]["optional-dependencies"]["stream"]
               if d.startswith("pyspark=="))
    pom = (ROOT / "local/maven/spark/pom.xml").read_text()
    assert re.search(r"<spark.version>(.+)</spark.version>", pom).group(1) == pin.split("==")[1]


def test_openapi_matches_the_app() -> None:
    doc = json.loads((ROOT / "services/iotpipe/query/openapi.json").read_text())
    assert doc["openapi"] == "3.1.0"
    app = create_app(Settings.from_env({}))
    routes = {r.rule: r.methods - {"HEAD", "OPTIONS"} for r in app.url_map.iter_rules()
              if r.rule != "/static/<path:filename>"}
    assert {p: {m.upper() for m in ops} for p, ops in doc["paths"].items()} == routes
    assert doc["components"]["schemas"]["MetricList"]["items"]["enum"] == list(METRICS)
    sensors = set(doc["components"]["schemas"]["MetricsRequest"]["properties"]) - {"from", "to"}
    assert sensors == set(Settings.from_env({}).sensors)
    app.extensions["iotpipe.service"].close()


def test_stream_image_pins_the_project_versions() -> None:
    """The stream image installs the app's libraries itself (its base brings PySpark): the same
    versions as pyproject, and every library the stream's modules import."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    deps = pyproject["project"]["dependencies"] + pyproject["project"]["optional-dependencies"][
        "stream"]
    pins = dict(d.split("==") for d in deps)
    dockerfile = (ROOT / "docker/stream/Dockerfile").read_text()
    installed = dict(re.findall(r"([a-z][a-z0-9-]*)==([0-9][0-9.]*)", dockerfile))
    assert installed and all(pins[name] == version for name, version in installed.items())
    assert {"msgspec", "prometheus-client", "confluent-kafka", "pyarrow"} <= installed.keys()


def test_the_chart_s_group_acls_cover_the_group_ids_the_query_service_uses() -> None:
    """librdkafka looks up a consumer's group coordinator even for hand-assigned partitions:
    in secure mode the query user's group ACL (a prefix) must cover both of its group ids."""
    values = yaml.safe_load((ROOT / "charts/iotpipe/values.yaml").read_text())
    prefix = values["kafka"]["security"]["groups"]["query"]
    source = "\n".join((ROOT / f"services/iotpipe/query/{name}.py").read_text()
                       for name in ("reader", "rollups"))
    group_ids = re.findall(r'"group\.id": "([^"]+)"', source)
    assert len(group_ids) == 2 and all(g.startswith(prefix) for g in group_ids), group_ids
