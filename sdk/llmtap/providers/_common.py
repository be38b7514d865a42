"""Small helpers shared by the provider modules: type-checked reads of parsed JSON, and parameters.

Parsed JSON is untrusted: every read checks the exact type (`type(x) is int` also rules out bool).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import orjson

from llmtap.providers.base import TEXT, ContentDelta, StreamItem, UsageReport

INT = (int,)
NUMBER = (int, float)  # type(x) in NUMBER excludes bool


def as_str(value: Any) -> str | None:
    return value if type(value) is str else None


def as_int(value: Any) -> int | None:
    """An int, or a float with an integral value (some APIs send 12.0 for a count)."""
    if type(value) is int:
        return value
    if type(value) is float and value.is_integer() and 0 <= value < 2**53:
        return int(value)
    return None


def as_dict(value: Any) -> dict[str, Any]:
    return value if type(value) is dict else {}


def as_list(value: Any) -> list[Any]:
    return value if type(value) is list else []


def load_object(data: bytes) -> dict[str, Any] | None:
    """A JSON object from bytes, or None for anything else (bad JSON included)."""
    try:
        obj = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return obj if type(obj) is dict else None


def json_text(value: Any) -> str:
    """Tool-call arguments given as a JSON value, as the text the model produced."""
    if value is None:
        return ""
    if type(value) is str:
        return value
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return ""


def append_text(out: list[StreamItem], text: Any, kind: str = TEXT) -> None:
    if text and type(text) is str:
        out.append(ContentDelta(text, kind))


def text_message(role: str, text: str) -> dict[str, Any]:
    return {"role": role, "parts": [{"type": "text", "content": text}]}


def read_params(
    source: dict[str, Any], spec: Iterable[tuple[str, str, tuple[type, ...]]], params: dict[str, Any]
) -> None:
    """Copy body keys into semconv attributes: (key, attribute, accepted types); the first key wins."""
    for key, attr, types in spec:
        value = source.get(key)
        if type(value) in types and attr not in params:
            params[attr] = value


def string_list(value: Any) -> list[str] | None:
    """A stop-sequence style value: a string or a non-empty list of strings."""
    if type(value) is str:
        return [value]
    if type(value) is list and value and all(type(v) is str for v in value):
        return list(value)
    return None


def usage(input_tokens: Any = None, output_tokens: Any = None, **extra: Any) -> UsageReport | None:
    """A UsageReport from raw counts, or None when nothing was reported."""
    report = UsageReport(as_int(input_tokens), as_int(output_tokens), **{k: as_int(v) for k, v in extra.items()})
    if all(value is None for value in (report.input_tokens, report.output_tokens, *map(as_int, extra.values()))):
        return None
    return report
