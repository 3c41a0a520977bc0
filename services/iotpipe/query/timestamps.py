"""Window bounds: `YYYY-MM-DD HH:MM:SS` (UTC, the prototype's format) or ISO-8601 with offset.

Bounds become epoch milliseconds; both ends are inclusive, so finer precision is refused
rather than rounded one way or the other.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

_PLAIN = re.compile(r"^\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2}(\.\d{1,3})?$")
_ISO = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,3})?"
                  r"(Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)$")  # (Python reads +00:60 as +01:00)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)
FORMAT_HELP = ("YYYY-MM-DD hh:mm:ss (UTC) or ISO-8601 with an offset, "
               "e.g. 2020-01-13T15:12:00Z, at most millisecond precision")


class BadTimestamp(ValueError):
    pass


def parse_ms(text: object) -> int:
    """Epoch milliseconds of a window bound; BadTimestamp if it is not one of the formats."""
    if not isinstance(text, str) or not (_PLAIN.match(text) or _ISO.match(text)):
        raise BadTimestamp(FORMAT_HELP)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise BadTimestamp(FORMAT_HELP) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    if moment < _EPOCH:
        raise BadTimestamp("timestamps before 1970-01-01 are not supported")
    return (moment - _EPOCH) // _MS


def format_ms(ms: int) -> str:
    """ISO-8601 UTC with milliseconds (the inverse of parse_ms)."""
    return (_EPOCH + ms * _MS).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
