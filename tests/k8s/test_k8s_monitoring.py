"""Dashboard panels and alerts only use metrics the exporters really expose, and are valid PromQL.

The exposed names come from the exporters' own code: each registry renders its exposition text
(prometheus_client.generate_latest) after every labelled metric was touched once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from k8s_support import Doc, Rendering, run, tool

KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "bool",
    "offset",
    "inf",
    "nan",
}


def _touch(module: Any) -> None:
    from prometheus_client.metrics import MetricWrapperBase

    for metric in vars(module).values():
        if isinstance(metric, MetricWrapperBase) and metric._labelnames:
            metric.labels(*["x"] * len(metric._labelnames))


def _sample_names(text: str) -> set[str]:
    return {
        re.split(r"[{ ]", line, maxsplit=1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


@pytest.fixture(scope="module")
def exposed() -> set[str]:
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    from iotpipe.query import metrics as query_metrics
    from iotpipe.sensors import metrics as sensor_metrics
    from iotpipe.stream.metrics import FAMILIES, StreamCollector, StreamSnapshot

    _touch(sensor_metrics)
    _touch(query_metrics)
    stream = StreamCollector()
    snapshot = StreamSnapshot()
    for family, (_, _, labels) in FAMILIES.items():
        snapshot.set(family, tuple("x" for _ in labels), 1.0)
    stream.publish(snapshot)
    registry = CollectorRegistry()
    registry.register(stream)
    names: set[str] = set()
    for reg in (sensor_metrics.REGISTRY, REGISTRY, registry):
        names |= _sample_names(generate_latest(reg).decode())
    assert "iotpipe_sensor_readings_total" in names and "iotpipe_http_requests_total" in names
    return {n for n in names if n.startswith("iotpipe_")}


def metric_names(expr: str) -> set[str]:
    """Metric names of a PromQL expression (strings, matchers, ranges and groupings removed)."""
    e = re.sub(r'"(\\.|[^"\\])*"', "", expr)
    e = re.sub(r"\{[^}]*\}|\[[^\]]*\]", "", e)
    e = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", e)
    words = re.findall(r"(?<![\w.])([a-zA-Z_:][\w:]*)\s*(\()?", e)
    return {w for w, call in words if not call and w.lower() not in KEYWORDS}


def dashboard_exprs(r: Rendering) -> list[str]:
    cm = r.one("ConfigMap", "iotpipe-dashboard")
    dashboard = json.loads(next(iter(cm["data"].values())))
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 12
    return exprs


def alert_rules(r: Rendering) -> list[Doc]:
    (rule,) = r.of_kind("PrometheusRule")
    return [x for g in rule["spec"]["groups"] for x in g["rules"]]


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, route) (rate(a_bucket{x="y}"}[5m])))'
        " / on(job) group_left b_total and time() - c"
    )
    assert metric_names(expr) == {"a_bucket", "b_total", "c"}


def test_dashboard_uses_exposed_metrics(renderings: dict[str, Rendering], exposed: set) -> None:
    used = set()
    for expr in dashboard_exprs(renderings["default"]):
        names = metric_names(expr)
        assert names, f"no metric in {expr}"
        assert names <= exposed, f"{expr}: not exposed: {sorted(names - exposed)}"
        used |= names
    for needed in (
        "iotpipe_sensor_readings_total",
        "iotpipe_sensor_window_value_mean",
        "iotpipe_stream_late_readings_total",
        "iotpipe_stream_event_time_lag_seconds",
        "iotpipe_stream_batch_duration_seconds",
        "iotpipe_http_requests_total",
        "iotpipe_http_request_duration_seconds_bucket",
        "iotpipe_query_rollup_lag_seconds",
        "iotpipe_stream_rollup_watermark_seconds",
        "iotpipe_query_windows_total",
    ):
        assert needed in used, f"the dashboard shows no {needed}"


def test_alerts_use_exposed_metrics(rendering: Rendering, exposed: set) -> None:
    alerts = {r["alert"] for r in alert_rules(rendering)}
    assert {
        "IotpipeSensorNoData",
        "IotpipeStreamLagGrowing",
        "IotpipeQueryErrorRate",
    } <= alerts
    rolled = rendering.values["query"]["rollups"] and rendering.values["stream"]["enabled"]
    assert ("IotpipeRollupsBehind" in alerts) == rolled
    for rule in alert_rules(rendering):
        names = metric_names(rule["expr"])
        assert names and names <= exposed, f"{rule['alert']}: {sorted(names - exposed)}"


def _promtool(*args: str | Path) -> None:
    result = run([tool("promtool"), *args])
    assert result.returncode == 0, result.stdout + result.stderr


def _rule_file(r: Rendering, folder: Path) -> Path:
    (rule,) = r.of_kind("PrometheusRule")
    path = folder / f"alerts-{r.name}.yaml"
    path.write_text(yaml.safe_dump({"groups": rule["spec"]["groups"]}))
    return path


def test_promtool_checks_the_alert_rules(rendering: Rendering, tmp_path: Path) -> None:
    _promtool("check", "rules", _rule_file(rendering, tmp_path))


def test_promtool_checks_the_dashboard_expressions(renderings: dict, tmp_path: Path) -> None:
    """Each panel expression becomes a recording rule, so promtool parses every one."""
    rules = [
        {"record": f"iotpipe:dashboard_expr_{i}", "expr": e}
        for i, e in enumerate(dashboard_exprs(renderings["default"]))
    ]
    path = tmp_path / "dashboard-rules.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    _promtool("check", "rules", path)


def _minutes(seconds: float) -> str:
    """Prometheus' humanizeDuration of a whole number of minutes below an hour."""
    assert seconds % 60 == 0 and 60 <= seconds < 3600
    return f"{int(seconds // 60)}m 0s"


def _fires(rule: Doc, at: str, description: str | None = None) -> Doc:
    """A promtool alert test: `rule` fires at `at` with its annotations (the description with
    its template filled in)."""
    annotations = {**rule["annotations"], **({"description": description} if description else {})}
    return {
        "eval_time": at,
        "alertname": rule["alert"],
        "exp_alerts": [{"exp_labels": rule["labels"], "exp_annotations": annotations}],
    }


def _quiet(rule: Doc, at: str) -> Doc:
    return {"eval_time": at, "alertname": rule["alert"], "exp_alerts": []}


def test_alerts_fire_on_synthetic_series(renderings: dict, tmp_path: Path) -> None:
    """promtool's rule unit tests: a stalled sensor, a 50% error rate and one query pod whose
    rollups stay behind past the threshold for 10 minutes raise their alerts."""
    r = renderings["default"]
    by_name = {}
    for rule in alert_rules(r):
        by_name.setdefault(rule["alert"], []).append(rule)
    stalled = next(x for x in by_name["IotpipeSensorNoData"] if x["labels"]["sensor"] == "humidity")
    errors = by_name["IotpipeQueryErrorRate"][0]
    pct = errors["annotations"]["description"].replace("{{ $value | humanizePercentage }}", "50%")
    (behind,) = by_name["IotpipeRollupsBehind"]
    threshold = r.values["monitoring"]["prometheusRules"]["rollupLagSeconds"]
    lag = behind["annotations"]["description"].replace(
        "{{ $value | humanizeDuration }}", _minutes(2 * threshold)
    )
    series = [
        {
            "series": f'iotpipe_sensor_readings_total{{sensor="{s["type"]}"}}',
            "values": "0+60x10 600x30" if s["type"] == "humidity" else "0+60x40",
        }
        for s in r.values["sensors"]
    ]
    series += [
        {
            "series": f'iotpipe_http_requests_total{{method="POST",route="/compute/metrics",'
            f'status="{code}"}}',
            "values": "0+10x40",
        }
        for code in (200, 500)
    ]
    # Pod a keeps up; pod b falls behind at minute 11: pending at 15m, firing by 30m.
    series += [
        {"series": 'iotpipe_query_rollup_lag_seconds{pod="a"}', "values": f"{threshold // 5}x40"},
        {
            "series": 'iotpipe_query_rollup_lag_seconds{pod="b"}',
            "values": f"{threshold // 5}x10 {2 * threshold}x30",
        },
    ]
    test = {
        "rule_files": [_rule_file(r, tmp_path).name],
        "evaluation_interval": "1m",
        "tests": [
            {
                "interval": "1m",
                "input_series": series,
                "alert_rule_test": [
                    _fires(stalled, "30m"),
                    _fires(errors, "30m", pct),
                    _quiet(errors, "5m"),
                    _fires(behind, "30m", lag),
                    _quiet(behind, "15m"),
                ],
            }
        ],
    }
    path = tmp_path / "alerts-test.yaml"
    path.write_text(yaml.safe_dump(test))
    _promtool("test", "rules", path)


def test_without_the_stream_no_alert_asks_for_its_metrics() -> None:
    """The stream exports the readings counted and its lag, and writes the rollups: without it,
    "no data" would fire for every sensor for ever, the stream's rules would wait for nothing,
    and the rollups' lag would be +Inf (the query service then reads no rollups)."""
    from k8s_support import render

    on, off = alert_rules(render("default")), alert_rules(render("default", "stream.enabled=false"))
    from_stream = [r["alert"] for r in on if any(
        n.startswith(("iotpipe_stream_", "iotpipe_sensor_")) for n in metric_names(r["expr"]))]
    assert "IotpipeSensorNoData" in from_stream and "IotpipeStreamLagGrowing" in from_stream
    from_stream.append("IotpipeRollupsBehind")
    assert {r["alert"] for r in off} == {r["alert"] for r in on} - set(from_stream)
    assert "IotpipeQueryErrorRate" in {r["alert"] for r in off}
    query = render("default", "stream.enabled=false").one("Deployment", "iotpipe-query")
    (container,) = query["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert env["IOTPIPE_QUERY_ROLLUPS"] == "false"
