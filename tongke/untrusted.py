"""Reading what clients send: JSON and display text that cannot hurt anyone downstream.

Python's json module accepts things that break us later: `"\\ud800"` decodes to a lone
surrogate that `str.encode("utf-8")` refuses (every message that repeats it would fail),
`[[[[...]]]]` recurses until RecursionError, `1e999` is infinity and a 4,000-digit integer
is valid JSON. Everything from outside goes through `loads`, so what it returns is plain
data every later step can encode, compare and show.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from tongke.errors import CodedError

MAX_DEPTH = 16
# Integers beyond what JavaScript represents exactly are never meaningful in our protocol.
MAX_INT = 2**53
MAX_NAME_CHARS = 64
# Bidirectional overrides make "evil.txt\u202egpj" show as "evil.txtjpg": not for names.
_BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


class BadInput(CodedError):
    """A value from outside that we refuse; the code is `bad_json` or `bad_request`."""


def _refuse_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _parse_int(text: str) -> int:
    if len(text) > 17:  # 2**53 has 16 digits; reject before int() does any work
        raise ValueError("number out of range")
    value = int(text)
    if abs(value) > MAX_INT:
        raise ValueError("number out of range")
    return value


def _parse_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError("number out of range")
    return value


def loads(text: str | bytes, *, max_depth: int = MAX_DEPTH) -> Any:
    """Decode JSON from outside; raise BadInput("bad_json", ...) for anything we refuse."""
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError:
            raise BadInput("bad_json", "the message is not UTF-8 text") from None
    # Nesting is checked before decoding so the decoder never recurses deeply.
    depth = _max_depth(text)
    if depth > max_depth:
        raise BadInput("bad_json", f"the message nests deeper than {max_depth} levels")
    try:
        value = json.loads(
            text,
            parse_int=_parse_int,
            parse_float=_parse_float,
            parse_constant=_refuse_constant,
        )
    except (ValueError, RecursionError) as exc:
        raise BadInput("bad_json", f"the message is not valid JSON: {exc}") from None
    _check_strings(value)
    return value


_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")


def _max_depth(text: str) -> int:
    """The deepest bracket nesting outside strings (an upper bound of the JSON depth)."""
    depth = deepest = 0
    for ch in _BRACKETS.findall(_STRING.sub("", text)):
        if ch in "[{":
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth -= 1
    return deepest


def _check_strings(value: Any) -> None:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            _encodable(item)
        elif isinstance(item, dict):
            for key, inner in item.items():
                _encodable(key)
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def _encodable(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise BadInput(
            "bad_json", "the message contains a lone surrogate (\\ud800-\\udfff), not text"
        ) from None


def display_text_problem(value: object, *, max_chars: int = MAX_NAME_CHARS) -> str | None:
    """Why `value` cannot be a name or label shown to others, or None when it can."""
    if not isinstance(value, str):
        return "must be a string"
    if not value.strip():
        return "must not be empty"
    if len(value) > max_chars:
        return f"must be at most {max_chars} characters"
    for ch in value:
        category = unicodedata.category(ch)
        if category == "Cs":
            return "must not contain lone surrogates"
        if category == "Cc" or ch in _BIDI_CONTROLS:
            return f"must not contain control characters (U+{ord(ch):04X})"
    return None


def display_text(value: object, what: str, *, max_chars: int = MAX_NAME_CHARS) -> str:
    """`value` stripped, or BadInput("bad_request") naming `what` and the problem."""
    problem = display_text_problem(value, max_chars=max_chars)
    if problem is not None:
        raise BadInput("bad_request", f"{what} {problem}")
    assert isinstance(value, str)
    return value.strip()


def safe_dumps(message: object) -> str:
    """JSON for the wire that never fails on text: lone surrogates go out escaped."""
    text = json.dumps(message, ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return json.dumps(message, ensure_ascii=True)
    return text


@web.middleware
async def json_body_guard(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every JSON request body, for every package's routes, passes `loads` first.

    A handler that then calls `request.json()` gets the same (cached) body, now known to
    be shallow, finite and encodable; one that would have recursed or stored a lone
    surrogate never sees it.
    """
    if (
        request.method in ("POST", "PUT", "PATCH")
        and request.content_type == "application/json"
        and request.body_exists
    ):
        raw = await request.read()
        if raw:
            try:
                loads(raw)
            except BadInput as exc:
                return web.json_response(
                    {"error": {"code": exc.code, "message": exc.message}}, status=400
                )
    return await handler(request)
