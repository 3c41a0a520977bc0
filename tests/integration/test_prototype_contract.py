"""The prototype's README examples, verbatim, answered byte-compatibly from the real broker."""

from __future__ import annotations

import json
import statistics

from flask.testing import FlaskClient

from iotpipe.query.timestamps import parse_ms
from query_dataset import Dataset

WINDOW = ("2020-01-13 15:12:00", "2020-01-13 15:13:00")


def _values(dataset: Dataset, sensor: str) -> list[int | float]:
    lo, hi = (parse_ms(t) for t in WINDOW)
    return [r.value for r in dataset.readings[sensor] if lo <= r.ts <= hi]


def test_readme_example_is_byte_compatible(client: FlaskClient, dataset: Dataset) -> None:
    body = """{
	"temperature" : ["count", "min"],
	"humidity" : ["average", "max"],
	"from": "2020-01-13 15:12:00",
	"to": "2020-01-13 15:13:00"
}"""
    resp = client.post("/compute/metrics", data=body, content_type="application/json")
    temperature, humidity = _values(dataset, "temperature"), _values(dataset, "humidity")
    assert len(temperature) == 61  # as in the prototype's README: both ends inclusive
    expected = json.dumps({"result": {
        "temperature": {"count": 61, "min": min(temperature)},
        "humidity": {"average": statistics.mean(humidity), "max": max(humidity)}},
        "errors": []})
    assert resp.status_code == 200
    assert resp.mimetype == "application/json"
    assert resp.get_data(as_text=True) == expected


def test_readme_example_with_trailing_comma_gets_a_clear_json_error(
        client: FlaskClient) -> None:
    body = """{
	"temperature" : ["count", "min"],
	"humidity" : ["average", "max"],
	"from": "2020-01-13 15:12:00",
	"to": "2020-01-13 15:13:00",
}"""
    resp = client.post("/compute/metrics", data=body, content_type="application/json")
    assert resp.status_code == 400
    payload = resp.get_json()
    assert payload["result"] == {}
    assert payload["errors"][0].startswith("Request body is not valid JSON: ")
    assert "line 6" in payload["errors"][0]


def test_readme_partial_errors_example(client: FlaskClient, dataset: Dataset) -> None:
    body = """{
	"temperature" : ["count", "min", "wrongMetric"],
	"humidity" : ["average", "max"],
	"from": "2020-01-13 15:12:00",
	"to": "2020-01-13 15:13:00",
	"wrongKey": 1
}"""
    resp = client.post("/compute/metrics", data=body, content_type="application/json")
    temperature, humidity = _values(dataset, "temperature"), _values(dataset, "humidity")
    expected = json.dumps({"result": {
        "temperature": {"count": len(temperature), "min": min(temperature)},
        "humidity": {"average": statistics.mean(humidity), "max": max(humidity)}},
        "errors": ["Unexpected metric wrongMetric to compute for the sensor temperature",
                   "Unexpected key wrongKey in the request body"]})
    assert resp.status_code == 200
    assert resp.get_data(as_text=True) == expected


def test_readme_only_wrong_keys_example(client: FlaskClient) -> None:
    body = """{
	"wrong" : ["wrongMetric"],
	"from": "2020-01-13 15:12:00",
	"to": "2020-01-13 15:13:00",
	"wrongKey": 1
}"""
    resp = client.post("/compute/metrics", data=body, content_type="application/json")
    assert resp.status_code == 400
    assert resp.get_data(as_text=True) == json.dumps({"result": {}, "errors": [
        "Unexpected key wrong in the request body",
        "Unexpected key wrongKey in the request body"]})


def test_health(client: FlaskClient) -> None:
    resp = client.get("/health")
    assert resp.status_code == 200
    assert resp.get_json() == {"status": "Healthy!"}
