"""Every custom resource the chart renders is valid against its CRD's openAPIV3Schema.

The CRDs are the upstream releases pinned in k8s/crds.txt, read from `k8s/crds/` (kept in the
repository), else from `.tools/crds/` (downloaded by `make tools`; see k8s/crd_files.py). To
check against the CRDs a cluster actually serves, dump them and point IOTPIPE_CRD_DIR at the folder:

    mkdir crds && for c in kafkas kafkanodepools kafkatopics kafkausers; do
      kubectl get crd $c.kafka.strimzi.io -o yaml > crds/$c.yaml; done
    kubectl get crd sparkapplications.sparkoperator.k8s.io -o yaml > crds/spark.yaml
    kubectl get crd -l app.kubernetes.io/part-of=kube-prometheus -o yaml > crds/monitoring.yaml
    IOTPIPE_CRD_DIR=$PWD/crds make k8s-check

(single CRD documents and `kind: List` dumps both work). Structural schemas reject unknown
fields on the server; so does this check: every object schema that lists `properties` and does
not say `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from crd_files import crd_dir
from k8s_support import Doc, Rendering

CRD_DIR = crd_dir()
METADATA_KEYS = {"name", "namespace", "labels", "annotations", "generateName", "finalizers"}


def structural(schema: Any) -> Any:
    """A copy of the schema where unknown object fields are errors, as on the API server."""
    if isinstance(schema, list):
        return [structural(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: structural(v) for k, v in schema.items()}
    pattern = out.get("pattern")
    if isinstance(pattern, str) and pattern.startswith("^(?i)"):
        # Go's RE2 takes a flag group anywhere; Python's `re` only at the very start.
        out["pattern"] = "(?i)^" + pattern[len("^(?i)") :]
    if (
        "properties" in out
        and not out.get("x-kubernetes-preserve-unknown-fields")
        and "additionalProperties" not in out
    ):
        out["additionalProperties"] = False
    return out


def load_crds(folder: Path) -> dict[tuple[str, str], Doc]:
    """(apiVersion, kind) -> structural schema of every served version."""
    assert folder.is_dir(), f"no CRD folder {folder} (run `make tools`, or set IOTPIPE_CRD_DIR)"
    schemas: dict[tuple[str, str], Doc] = {}
    for path in sorted(folder.glob("*.y*ml")):
        for doc in yaml.safe_load_all(path.read_text()):
            for crd in (doc or {}).get("items", [doc]) if doc else []:
                if crd.get("kind") != "CustomResourceDefinition":
                    continue
                group, kind = crd["spec"]["group"], crd["spec"]["names"]["kind"]
                for v in crd["spec"]["versions"]:
                    if v.get("served", True):
                        schema = v["schema"]["openAPIV3Schema"]
                        schemas[(f"{group}/{v['name']}", kind)] = structural(schema)
    assert schemas, f"no CustomResourceDefinition in {folder}"
    return schemas


@pytest.fixture(scope="module")
def crds() -> dict[tuple[str, str], Doc]:
    return load_crds(CRD_DIR)


def check(doc: Doc, crds: dict[tuple[str, str], Doc]) -> None:
    key = (doc["apiVersion"], doc["kind"])
    assert key in crds, f"no CRD for {key} in {CRD_DIR}"
    schema = copy.deepcopy(crds[key])
    # The API server validates metadata itself; keep the CRD's view of it loose.
    schema.setdefault("properties", {})["metadata"] = {"type": "object"}
    unknown_meta = set(doc["metadata"]) - METADATA_KEYS
    assert not unknown_meta, f"unexpected metadata fields {unknown_meta}"
    jsonschema.validate(doc, schema, cls=jsonschema.Draft7Validator)


def custom_resources(r: Rendering) -> list[Doc]:
    return [
        d
        for d in r.docs
        if "." in d["apiVersion"].split("/")[0]
        and not d["apiVersion"].startswith(("networking.k8s.io", "rbac.authorization.k8s.io"))
    ]


def test_custom_resources_match_their_crds(rendering: Rendering, crds: dict) -> None:
    resources = custom_resources(rendering)
    kinds = {d["kind"] for d in resources}
    assert {
        "Kafka",
        "KafkaNodePool",
        "KafkaTopic",
        "SparkApplication",
        "PodMonitor",
        "ServiceMonitor",
        "PrometheusRule",
    } <= kinds
    if rendering.values["kafka"]["security"]["enabled"]:
        assert "KafkaUser" in kinds
    for doc in resources:
        try:
            check(doc, crds)
        except jsonschema.ValidationError as e:
            name = f"{doc['kind']}/{doc['metadata']['name']}"
            raise AssertionError(f"{rendering.name}: {name}: {e.message} at {list(e.path)}") from e


@pytest.mark.parametrize(
    ("kind", "path", "typo"),
    [
        ("KafkaTopic", ("spec",), "partitons"),
        ("Kafka", ("spec", "kafka"), "listener"),
        ("SparkApplication", ("spec", "driver"), "serviceAcount"),
        ("PodMonitor", ("spec",), "podMetricEndpoints"),
    ],
)
def test_typo_in_a_custom_resource_fails(
    renderings: dict[str, Rendering], crds: dict, kind: str, path: tuple[str, ...], typo: str
) -> None:
    doc = copy.deepcopy(renderings["default"].of_kind(kind)[0])
    node = doc
    for key in path:
        node = node[key]
    node[typo] = 1
    with pytest.raises(jsonschema.ValidationError):
        check(doc, crds)


def test_free_form_fields_stay_free(renderings: dict[str, Rendering], crds: dict) -> None:
    """Kafka broker `config` preserves unknown fields: any broker setting must still validate."""
    doc = copy.deepcopy(renderings["default"].of_kind("Kafka")[0])
    doc["spec"]["kafka"]["config"]["log.retention.check.interval.ms"] = 300000
    check(doc, crds)
