"""Bearer-token auth, hostile bodies, and error bodies that leak nothing internal."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from flask.testing import FlaskClient

from iotpipe.core.settings import SettingsError
from iotpipe.query.app import create_app
from query_dataset import Dataset

WINDOW = {"from": "2020-01-13 15:12:00", "to": "2020-01-13 15:13:00"}
TOKEN = "0123456789abcdef-token!#$%&*@"  # any printable ASCII but a space


@pytest.fixture(scope="module")
def secured(dataset: Dataset, tmp_path_factory: pytest.TempPathFactory) -> FlaskClient:
    token_file: Path = tmp_path_factory.mktemp("secret") / "token"
    token_file.write_text(TOKEN + "\n")
    settings = dataset.settings.__class__(**{**dataset.settings.__dict__,
                                            "api_token_file": str(token_file)})
    return create_app(settings).test_client()


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN,
                                    f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}",
                                    f"Bearer {TOKEN.upper()}", f"Bearer  {TOKEN}"])
def test_wrong_or_missing_token_is_401(secured: FlaskClient, header: str | None) -> None:
    headers = {"Authorization": header} if header else {}
    for method, path in (("post", "/compute/metrics"), ("get", "/metrics"),
                         ("get", "/openapi.json")):
        resp = getattr(secured, method)(path, json={"temperature": ["count"]} | WINDOW,
                                        headers=headers)
        assert resp.status_code == 401 and resp.headers["WWW-Authenticate"] == "Bearer"
        assert resp.get_json() == {"result": {}, "errors": ["Missing or wrong bearer token"]}


def test_right_token_passes_and_health_stays_open(secured: FlaskClient) -> None:
    for scheme in ("Bearer", "bearer", "BEARER"):  # (a scheme's case does not matter)
        resp = secured.post("/compute/metrics", json={"temperature": ["count"]} | WINDOW,
                            headers={"Authorization": f"{scheme} {TOKEN}"})
        assert resp.status_code == 200
        assert resp.get_json()["result"] == {"temperature": {"count": 61}}
    assert secured.get("/health").status_code == 200


def test_short_missing_or_unsendable_token_refuses_to_start(dataset: Dataset,
                                                           tmp_path: Path) -> None:
    """A token a client could not send as it is (a space, a control character, non-ASCII: a
    header is Latin-1 to the server, UTF-8 to a client) would refuse every request."""
    (tmp_path / "short").write_text("abc")
    (tmp_path / "unsendable").write_text("0123456789abcdef-tökén")
    (tmp_path / "spaced").write_text("0123456789 abcdef-token")
    for path in [tmp_path / name for name in ("short", "missing", "unsendable", "spaced")]:
        settings = dataset.settings.__class__(**{**dataset.settings.__dict__,
                                                "api_token_file": str(path)})
        with pytest.raises(SettingsError, match="IOTPIPE_API_TOKEN_FILE"):
            create_app(settings)


@pytest.mark.parametrize("body,status", [
    ('{"a":' * 5000 + "1" + "}" * 5000, 400),  # deep nesting
    (json.dumps({"temperature": ["count"], "from": 1e308, "to": 10**400}), 400),
    ("9" * 5000, 400),  # an integer too long to parse
    (json.dumps({"températüre": ["count"], "温度": ["max"]} | WINDOW, ensure_ascii=False), 400),
    (json.dumps({"temperature": ["count"], "from": "2020-01-13 15:12:00\x00", "to": "x"}), 400),
    ('{"temperature": ["count"], "from": Infinity, "to": -Infinity}', 400),
    ("x" * (10 * 2**20), 413),  # 10 MB
])
def test_hostile_bodies_get_a_clear_4xx(client: FlaskClient, body: str, status: int) -> None:
    resp = client.post("/compute/metrics", data=body.encode(), content_type="application/json")
    assert resp.status_code == status
    payload = resp.get_json()
    assert payload["result"] == {} and payload["errors"]
    text = resp.get_data(as_text=True)
    assert "Traceback" not in text and "127.0.0.1" not in text and "File \"" not in text
