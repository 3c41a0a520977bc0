"""Every bad input gets a clear 4xx JSON answer (never a 500), and the valid rest is computed."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace

import pytest
from flask.testing import FlaskClient

from iotpipe.query import metrics as prom
from iotpipe.query.app import create_app
from iotpipe.query.request import MAX_ERRORS
from query_dataset import Dataset

WINDOW = {"from": "2020-01-13 15:12:00", "to": "2020-01-13 15:13:00"}


def _post(client: FlaskClient, body: object, **kwargs: object) -> tuple[int, dict]:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    kwargs.setdefault("content_type", "application/json")
    resp = client.post("/compute/metrics", data=data, **kwargs)
    payload = resp.get_json()
    assert payload is not None, resp.get_data()
    assert set(payload) == {"result", "errors"}
    return resp.status_code, payload


@pytest.mark.parametrize("body,status,message", [
    ("{", 400, "Request body is not valid JSON: Expecting property name"),
    ("", 400, "Request body is not valid JSON"),
    (b"\xff\xfe", 400, "Request body is not valid JSON: Expecting value"),  # a UTF-16 BOM
    (b'{"a": "\xff"}', 400, "Request body is not valid JSON: not UTF-8, UTF-16 or UTF-32 text"),
    ('{"temperature": ["count"], "note": ' + "9" * 5000 + "}", 400,
     "Request body has an integer of more than 4300 digits"),
    ('{"from": NaN}', 400, "Request body is not valid JSON: NaN is not valid JSON"),
    ("[1, 2]", 400, "Request body must be a JSON object"),
    ('"text"', 400, "Request body must be a JSON object"),
    ({"temperature": ["count"]}, 400, 'Keys "from" and "to" are required'),
    ({"temperature": ["count"], "from": "2020-01-13 15:12:00"}, 400,
     'Keys "from" and "to" are required'),
    ({"temperature": ["count"], "from": "yesterday", "to": "2020-01-13 15:13:00"}, 400,
     'Incorrect input timestamp format for "from", should be YYYY-MM-DD hh:mm:ss (UTC)'),
    ({"temperature": ["count"], "from": "2020-01-13 15:12:00", "to": 5}, 400,
     'Incorrect input timestamp format for "to"'),
    ({"temperature": ["count"], "from": "2020-02-30 15:12:00", "to": "2020-03-01 00:00:00"},
     400, 'Incorrect input timestamp format for "from"'),
    ({"temperature": ["count"], "from": "2020-01-13T15:12:00", "to": "2020-01-13T15:13:00Z"},
     400, 'Incorrect input timestamp format for "from"'),
    ({"temperature": ["count"], "from": "2020-01-13 15:12:00.1234", "to":
      "2020-01-13 15:13:00"}, 400, "at most millisecond precision"),
    ({"temperature": ["count"], "from": "1969-12-31 23:59:59", "to": "2020-01-13 15:13:00"},
     400, "before 1970"),
    ({"temperature": ["count"], "from": "2020-01-13 15:13:00", "to": "2020-01-13 15:12:00"},
     400, '"from" has to be earlier than "to"'),
    ({"temperature": ["count"], "from": "2020-01-01 00:00:00", "to": "2021-01-01 00:00:00"},
     400, "The window is longer than the maximum of 2678400 seconds"),
    ({"temperature": "count"} | WINDOW, 400,
     "Metrics for the sensor temperature must be a list of strings"),
    ({"temperature": ["count", 3]} | WINDOW, 400,
     "Metrics for the sensor temperature must be a list of strings"),
    ({"temperature": []} | WINDOW, 400, "No metric requested for the sensor temperature"),
    (WINDOW, 400, "No sensor requested; valid sensors: temperature, humidity, pressure"),
    ("[" * 100 + "]" * 100, 400, "Request body is nested deeper than 32 levels"),
    # a bracket inside a string does not hide a level (33 here)
    ('{"x": ["]", ' + "[" * 31 + "]" * 31 + "]}", 400,
     "Request body is nested deeper than 32 levels"),
    ("[" * 5000 + "]" * 5000, 400, "Request body is nested deeper than 32 levels"),
])
def test_bad_request_as_a_whole(client: FlaskClient, body: object, status: int,
                                message: str) -> None:
    got_status, payload = _post(client, body)
    assert got_status == status
    assert payload["result"] == {}
    assert any(e.startswith(message) or message in e for e in payload["errors"]), payload


def test_duplicated_metric_is_reported_and_computed_once(client: FlaskClient) -> None:
    status, payload = _post(client, {"temperature": ["count", "max", "count"]} | WINDOW)
    assert status == 200
    assert list(payload["result"]["temperature"]) == ["count", "max"]
    assert payload["errors"] == ["Duplicated metric count for the sensor temperature"]


@pytest.fixture(scope="module")
def windy(dataset: Dataset) -> Iterator[FlaskClient]:
    """The dataset's service with one more sensor, `wind`, whose topic does not exist."""
    settings = replace(dataset.settings, sensors=(*dataset.settings.sensors, "wind"))
    app = create_app(settings)
    yield app.test_client()
    app.extensions["iotpipe.service"].close()


@pytest.mark.parametrize("unknown", [MAX_ERRORS, MAX_ERRORS + 1, 3 * MAX_ERRORS])
def test_errors_about_the_body_are_listed_up_to_max_errors(windy: FlaskClient,
                                                            unknown: int) -> None:
    """The answer's own notes (here a sensor without a topic) are always listed after them."""
    metrics = [f"m{i}" for i in range(unknown)]
    status, payload = _post(windy, {"temperature": ["count", *metrics], "wind": ["count"]}
                            | WINDOW)
    errors = [f"Unexpected metric {m} to compute for the sensor temperature" for m in metrics]
    if len(errors) > MAX_ERRORS:
        errors[MAX_ERRORS - 1:] = [f"{unknown - MAX_ERRORS + 1} more errors about keys or "
                                   "metrics not listed"]
    assert status == 200
    assert list(payload["result"]) == ["temperature"]
    assert payload["errors"] == [*errors, "No topic for the sensor wind on the broker"]


def test_brackets_inside_strings_are_not_nesting(client: FlaskClient) -> None:
    status, payload = _post(client, {"temperature": ["count", "[" * 40]} | WINDOW)
    assert status == 200
    assert list(payload["result"]["temperature"]) == ["count"]
    assert len(payload["errors"]) == 1 and "[[[" in payload["errors"][0]


def test_bad_part_beside_valid_rest(client: FlaskClient) -> None:
    status, payload = _post(client, {"temperature": ["count"], "humidity": "max",
                                     "pressure": []} | WINDOW)
    assert status == 200
    assert list(payload["result"]) == ["temperature"]
    assert payload["errors"] == ["Metrics for the sensor humidity must be a list of strings",
                                 "No metric requested for the sensor pressure"]


def test_iso_timestamps_with_offsets_mean_the_same_instant(client: FlaskClient) -> None:
    plain = _post(client, {"temperature": ["count", "sum"]} | WINDOW)
    iso = _post(client, {"temperature": ["count", "sum"], "from": "2020-01-13T16:12:00+01:00",
                         "to": "2020-01-13T15:13:00.000Z"})
    assert plain == iso
    assert plain[1]["result"]["temperature"]["count"] == 61


def test_oversize_body_is_refused_before_reading(client: FlaskClient) -> None:
    body = json.dumps({"temperature": ["count"], "pad": "x" * 70_000} | WINDOW)
    status, payload = _post(client, body)
    assert status == 413
    assert payload["errors"] == ["Request body is larger than 65536 bytes"]


@pytest.mark.parametrize("encoding,content_type", [
    ("utf-8-sig", "application/json"), ("utf-16", "application/json"),
    ("utf-32-le", "application/json; charset=utf-32"),
    ("utf-8", "application/merge-patch+json"), ("utf-8", "application/vnd.api+json")])
def test_json_as_the_prototype_took_it(client: FlaskClient, encoding: str,
                                       content_type: str) -> None:
    """The prototype's Flask read JSON in UTF-8, -16 or -32 (a byte order mark too) and under
    any application/*+json type."""
    body = {"temperature": ["count"]} | WINDOW
    want = _post(client, body)
    assert want[0] == 200 and want[1]["result"]["temperature"]["count"] == 61
    assert _post(client, json.dumps(body).encode(encoding), content_type=content_type) == want


def test_wrong_content_type(client: FlaskClient) -> None:
    status, payload = _post(client, {"temperature": ["count"]} | WINDOW,
                            content_type="text/plain")
    assert status == 415
    assert payload["errors"] == ["Content-Type must be application/json (or application/*+json)"]


def test_wrong_method_and_unknown_route_are_json(client: FlaskClient) -> None:
    resp = client.get("/compute/metrics")
    assert resp.status_code == 405
    assert resp.get_json()["errors"][0].startswith("Method Not Allowed")
    assert "POST" in resp.headers["Allow"] and resp.content_type == "application/json"
    resp = client.get("/nope")
    assert resp.status_code == 404
    assert resp.get_json()["result"] == {}


def test_made_up_methods_share_one_metrics_label(client: FlaskClient) -> None:
    """A client inventing methods must not add a series per method to /metrics."""
    def methods() -> set[str]:
        return {s.labels["method"] for m in prom.REQUESTS.collect() for s in m.samples}

    for i in range(3):
        resp = client.open("/compute/metrics", method=f"XQ{i:03}")
        assert resp.status_code == 405
        assert resp.get_json()["errors"][0].startswith("Method Not Allowed")
    assert "other" in methods() and not {m for m in methods() if m.startswith("XQ")}
