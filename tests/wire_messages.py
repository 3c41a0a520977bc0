"""Generated topic messages, valid and malformed, for comparing decoders with `wire.decode`.

Each message is built from JSON fragments so that every odd form is reachable: wrong types,
out-of-range and huge numbers, floats for integers, non-finite tokens, missing, extra and
repeated fields, whitespace, escapes (lone surrogates too), invalid UTF-8, other roots.
"""

from __future__ import annotations

import json
import random

from iotpipe.core import wire

SENSOR = "temperature"

_ODD = ["true", "false", "null", '"x"', "[]", "{}", '{"device":"d"}', "1.0", "1e2", "-1",
        "NaN", "Infinity", "-Infinity", '"NaN"', "9" * 400, "1e400", "0.5", "007", "+1", ".5",
        "1.", "-0", "-0.0", "2E0", str(wire.MAX_SEQ), str(wire.MAX_SEQ + 1), "9" * 5000]


def _device(rng: random.Random) -> str:
    return rng.choice([
        json.dumps(f"dev-{rng.randrange(1000)}"), json.dumps("Küche-3", ensure_ascii=False),
        json.dumps("Küche-3"), '""', '"a\\"b"', '"a\\\\b"', '"\\ud800x"', '"x\\udc00"',
        '"\\ud83d\\ude00"', json.dumps("😀", ensure_ascii=False), '"\\u0000"', '"tab\\there"',
        '"a\\/b"', "5", "null", '["d"]', '"' + "d" * 300 + '"'])


def _fields(rng: random.Random) -> list[tuple[str, str]]:
    """(key, raw JSON value) of a reading, each value valid or odd."""
    seq, ts = rng.randrange(0, 10**6), rng.randrange(1_600_000_000_000, 1_800_000_000_000)
    value = rng.choice([str(rng.randrange(-50, 101)), repr(round(rng.uniform(-1e3, 1e3), 3)),
                        repr(rng.uniform(-1e300, 1e300)), "1e-320", "1.5E+3", str(2**53 + 1),
                        "-0", "0", "123456789012345678901234567890"])
    fields = [("device", _device(rng) if rng.random() < 0.3 else json.dumps(f"d{seq % 7}")),
              ("sensor", json.dumps(SENSOR)), ("seq", str(seq)), ("ts", str(ts)),
              ("value", value)]
    for i in range(len(fields)):
        if rng.random() < 0.08:
            fields[i] = (fields[i][0], rng.choice(_ODD))
    if rng.random() < 0.05:
        fields[1] = ("sensor", rng.choice(['"humidity"', '"Temperature"', '"temperature "',
                                           '"temp\\u0065rature"']))
    if rng.random() < 0.05:
        fields[3] = ("ts", rng.choice([str(wire.MAX_TS_MS), str(wire.MAX_TS_MS + 1), "0"]))
    return fields


def _shape(rng: random.Random, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Structural changes: order, missing, extra and repeated fields."""
    roll = rng.random()
    if roll < 0.06:
        del fields[rng.randrange(len(fields))]
    elif roll < 0.12:
        rng.shuffle(fields)
    elif roll < 0.20:
        extra = rng.choice(['"x"', "1", "NaN", "1e999", "9" * 5000, '{"device":5}', "[1,2]",
                            '"\\ud800"', "null", '{"sensor":"humidity","seq":"1"}'])
        fields.insert(rng.randrange(len(fields) + 1), (rng.choice(["extra", "Seq", ""]), extra))
    elif roll < 0.28:
        key, _ = rng.choice(fields)
        fields.insert(rng.randrange(len(fields) + 1), (key, rng.choice([*_ODD, '"d9"', "3"])))
    return fields


def _text(rng: random.Random, fields: list[tuple[str, str]]) -> str:
    roll = rng.random()
    if roll < 0.85:
        return "{" + ",".join(f'"{k}":{v}' for k, v in fields) + "}"
    ws = lambda: rng.choice([" ", "\n", "\t", "\r", "  ", "\x0c", "\u00a0", ""])  # noqa: E731
    body = "{" + ws() + ("," + ws()).join(f'"{k}"{ws()}:{ws()}{v}' for k, v in fields)
    return ws() + body + ws() + "}" + ws()


def _bytes(rng: random.Random, text: str) -> bytes | None:
    raw = text.encode("utf-8", "surrogatepass")
    roll = rng.random()
    if roll < 0.03:
        i = rng.randrange(len(raw) + 1)
        return raw[:i] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\xc0\xaf",
                                     b"\xf4\x90\x80\x80", b"\xe2\x82"]) + raw[i:]
    if roll < 0.05:
        return raw[:rng.randrange(len(raw))]
    if roll < 0.08:
        return rng.choice([None, b"", b"null", b"[]", b'"x"', b"1", b"\xef\xbb\xbf" + raw,
                           raw + b"x", raw + b"{}", raw.replace(b'"', b"'"), b"/**/" + raw])
    return raw


def messages(seed: int, n: int) -> list[bytes | None]:
    """`n` messages of topic SENSOR; canonical ones (wire.encode's form) among them."""
    rng = random.Random(seed)
    out: list[bytes | None] = []
    for _ in range(n):
        if rng.random() < 0.25:
            r = wire.Reading(f"d{rng.randrange(50)}", SENSOR, rng.randrange(10**9),
                             rng.randrange(10**12, 10**13), rng.choice([rng.randrange(-99, 99),
                                                                        rng.uniform(-99, 99)]))
            out.append(wire.encode(r))
        else:
            out.append(_bytes(rng, _text(rng, _shape(rng, _fields(rng)))))
    return out
