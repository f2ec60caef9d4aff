"""Strict JSON for request bodies: every malformed body is a 400 (or 413), never a 500 further in.

DRF's own JSONParser lets through what only fails later, as a 500: nesting deep enough to raise
RecursionError, an unknown `charset` (LookupError), lone surrogates ("\\ud800") and NUL characters that
no database column, cache key or UTF-8 response can hold, and numbers such as 1e400 that parse as
infinity. It also reads a body of any size (so does its form parser). `parse_json` refuses all of these
with the one error shape; `JSONParser` is it as a DRF parser, and `FormParser` caps form bodies the same
way (REST_FRAMEWORK["DEFAULT_PARSER_CLASSES"]).
"""

from __future__ import annotations

import codecs
import io
import json
import math
from typing import Any

from django.conf import settings
from rest_framework import parsers

from gateway_project.errors import BadRequest, PayloadTooLarge

# Request bodies of the REST API are flat objects; 64 levels is far beyond any of them.
MAX_DEPTH = 64


class _NotFinite(ValueError):
    pass


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(text)
    return value


def _refuse_constant(name: str) -> None:
    raise _NotFinite(name)  # NaN, Infinity, -Infinity: not JSON


def bad_text(text: str) -> bool:
    """Text no database column, cache key or UTF-8 response can hold: a NUL, or a lone surrogate."""
    if "\x00" in text:
        return True
    if text.isascii():
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, e.g. from the escape "\ud800"
        return True
    return False


def _check(value: Any, max_depth: int) -> None:
    """Walk the parsed value without recursion: depth, and text every store and response can hold."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            if bad_text(item):
                raise BadRequest("Strings must be valid Unicode without NUL characters or lone surrogates.",
                                 code="invalid_string")
            continue
        if isinstance(item, dict):
            children = list(item.values())
            for key in item:
                stack.append((key, depth))
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > max_depth:
            raise BadRequest(f"The JSON body is nested more than {max_depth} levels deep.", code="json_too_deep")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (str, dict, list)))


def parse_json(raw: bytes | str, *, encoding: str = "utf-8", max_depth: int = MAX_DEPTH) -> Any:
    """The parsed body, or BadRequest: `parse_error`, `json_too_deep` or `invalid_string`."""
    if isinstance(raw, bytes):
        try:
            text = raw.decode(codecs.lookup(encoding).name)
        except LookupError:
            raise BadRequest(f"Unknown charset '{encoding}'.", code="parse_error") from None
        except UnicodeDecodeError:
            raise BadRequest(f"The JSON body is not valid {encoding}.", code="parse_error") from None
    else:
        text = raw
    try:
        value = json.loads(text, parse_float=_finite_float, parse_constant=_refuse_constant)
    except _NotFinite:
        raise BadRequest("JSON numbers must be finite.", code="parse_error") from None
    except RecursionError:
        raise BadRequest(f"The JSON body is nested more than {max_depth} levels deep.", code="json_too_deep") from None
    except ValueError as error:  # JSONDecodeError, and integers longer than Python converts
        raise BadRequest(f"JSON parse error - {error}", code="parse_error") from None
    _check(value, max_depth)
    return value


def read_limited(stream: Any) -> bytes:
    """The whole body, refused with a 413 once it passes DATA_UPLOAD_MAX_MEMORY_SIZE."""
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    raw = stream.read() if limit is None else stream.read(limit + 1)
    if limit is not None and len(raw) > limit:
        raise PayloadTooLarge("The request body is too large.", code="request_too_large")
    return raw


def _refuse_declared_oversize(parser_context: dict) -> None:
    request = parser_context.get("request")
    limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    declared = (request.META.get("CONTENT_LENGTH") or "") if request is not None else ""
    if limit is not None and declared.isdigit() and int(declared) > limit:
        raise PayloadTooLarge("The request body is too large.", code="request_too_large")


class JSONParser(parsers.BaseParser):
    media_type = "application/json"

    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        parser_context = parser_context or {}
        # DRF hands over the raw request stream, which Django does not cap (only request.body is).
        _refuse_declared_oversize(parser_context)
        encoding = parser_context.get("encoding") or settings.DEFAULT_CHARSET
        return parse_json(read_limited(stream), encoding=encoding)


class FormParser(parsers.FormParser):
    def parse(self, stream: Any, media_type: str | None = None, parser_context: dict | None = None) -> Any:
        _refuse_declared_oversize(parser_context or {})
        return super().parse(io.BytesIO(read_limited(stream)), media_type, parser_context)
