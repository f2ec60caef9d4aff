"""Hypothesis strategies and checks shared by the property-based tests of the input surface.

Every example is a request a client could send: JSON of any shape (lone surrogates, NULs, huge and
non-finite numbers, deep nesting), bytes that are no JSON at all, odd content types and query strings.
The properties: never a 5xx, every refusal in the one error shape, and no hold left behind.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from metering.models import UsageMeter, UsageReservation

# CI runs the same examples every time (derandomize) and a bounded number of them; no example database.
FUZZ = settings(derandomize=True, deadline=None, database=None, print_blob=False,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                                       HealthCheck.data_too_large, HealthCheck.filter_too_much])

NASTY_TEXT = ["", " ", "\ud800", "a\udfffb", "\udc00\ud800", "\x00", "nul\x00byte", "\ufeff", "\u202e", "😀",
              "null", "true", "0", "-1", "1e400", "NaN", "%s%n", "{}", "[]", "'; DROP TABLE x; --", "../../etc",
              "<script>", "x" * 3000, "\r\n", "é" * 200]
NASTY_NUMBERS = [0, -1, 1, 2**31, 2**31 - 1, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 2**64, 10**30, 10**300,
                 0.5, -0.0, 1e308, 5e-324]

# Text a client can put in JSON: any code point, lone surrogates included (sent as \\ud800 escapes).
any_text = st.one_of(st.text(max_size=24), st.text(st.characters(), max_size=8), st.sampled_from(NASTY_TEXT))
# Text a query string can carry (a URL is UTF-8: no lone surrogates).
query_text = st.one_of(st.text(st.characters(codec="utf-8"), max_size=24),
                       st.sampled_from([t for t in NASTY_TEXT if "\ud800" not in t and "\udfff" not in t
                                        and "\udc00" not in t]))
numbers = st.one_of(st.integers(), st.integers(min_value=-(2**80), max_value=2**80), st.sampled_from(NASTY_NUMBERS),
                    st.floats(allow_nan=False, allow_infinity=False))
scalars = st.one_of(st.none(), st.booleans(), numbers, any_text)
json_values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(any_text, inner, max_size=4), max_leaves=12
)


def dumps(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=True).encode()


def nested(depth: int, leaf: str = "1") -> bytes:
    return ("[" * depth + leaf + "]" * depth).encode()


# Bodies no JSON serializer would write: broken syntax, non-finite numbers, deep nesting, other encodings.
raw_bodies = st.one_of(
    st.sampled_from([b"", b"{", b"}", b"[1,]", b"nul", b"NaN", b'{"a": NaN}', b"1e400", b'{"a": -1e400}',
                     b'{"a": Infinity}', b"\xff\xfe\x00", b"\xef\xbb\xbf{}", b"9" * 5000, b'"\\ud800"',
                     b'{"\\udc00": 1}', b'{"a": "\\u0000"}', b'{"a": 1, "a": [2]}', "{\"é\": 1}".encode("latin-1"),
                     b"\x00", b"[" * 100_000, nested(1000), nested(5000)]),
    st.integers(min_value=1, max_value=5000).map(nested),
    st.integers(min_value=1, max_value=5000).map(lambda n: ('{"a":' * n + "1" + "}" * n).encode()),
    st.binary(max_size=48),
)

CONTENT_TYPES = ["application/json", "application/json; charset=utf-8", "application/json; charset=latin-1",
                 "application/json; charset=no-such-charset", "text/plain", "application/x-www-form-urlencoded",
                 "multipart/form-data", "application/xml", ""]
content_types = st.one_of(st.just("application/json"), st.sampled_from(CONTENT_TYPES))


@st.composite
def bodies(draw, fields: dict[str, tuple[st.SearchStrategy, st.SearchStrategy]],
           optional: frozenset[str] = frozenset()) -> bytes:
    """Mostly an object shaped like the endpoint's input with one or two fields wrong, missing or nested
    thousands deep (so each bad value reaches the code behind the checks before it), else anything at all.

    `fields` maps each field to (a valid value, any value); an `optional` field is sent one time in three,
    the others nine times in ten.
    """
    kind = draw(st.integers(0, 5))
    if not fields or kind == 5:
        return draw(st.one_of(json_values.map(dumps), raw_bodies))
    body = {name: draw(valid) for name, (valid, _) in fields.items()
            if draw(st.integers(0, 2) if name in optional else st.integers(0, 9))}
    if kind == 0:
        return dumps(body)
    names = sorted(fields)
    for _ in range(draw(st.integers(1, 2))):
        name = draw(st.sampled_from(names))
        body[name] = draw(fields[name][1])
    if kind == 4:
        body[draw(any_text)] = draw(json_values)
    if kind != 3:
        return dumps(body)
    # Deep nesting in one field, as a JSON serializer never writes it (and could not: RecursionError).
    name = draw(st.sampled_from(names))
    body.pop(name, None)
    head = dumps(body)[:-1] + (b", " if body else b"")
    return head + dumps(name) + b": " + nested(draw(st.integers(1, 5000))) + b"}"


def assert_well_formed(response) -> Any:
    """Never a 5xx; a refusal is JSON in the one error shape; a success is JSON (or an event stream, or
    the usage export's CSV)."""
    try:
        content = b"".join(response) if response.streaming else response.content  # consumes async streams too
    except Exception as error:  # the stream broke off after its 200: a client sees a cut connection
        raise AssertionError(f"the event stream crashed: {error!r}") from error
    assert response.status_code < 500, (response.status_code, content[:1000])
    if response.status_code == 204:
        return None
    if response.get("Content-Type", "").startswith("text/event-stream"):
        assert response.status_code == 200, content[:1000]
        return content
    if response.get("Content-Type", "").startswith("text/csv"):  # the usage export; its refusals stay JSON
        assert response.status_code == 200, content[:1000]
        assert content.decode("utf-8").splitlines()[0], "a CSV export starts with its header row"
        return content
    body = json.loads(content)
    if response.status_code >= 400:
        assert isinstance(body, dict) and set(body) == {"error"}, body
        error = body["error"]
        assert isinstance(error, dict) and {"code", "message", "type"} <= set(error), error
        for name in ("code", "message", "type"):
            assert isinstance(error[name], str) and error[name], error
    return body


def assert_no_holds() -> None:
    """Whatever the request did, it left nothing reserved."""
    active = list(UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE).values_list("pk", flat=True))
    assert not active, f"reservations still ACTIVE: {active}"
    held = list(UsageMeter.objects.exclude(reserved=0).values("metric", "window", "reserved"))
    assert not held, f"meters still holding: {held}"


def release_leftover_holds() -> None:
    """After a failing example: free what it leaked (as an operator would), so the next one starts clean."""
    from metering.services import reservation_release

    for pk in UsageReservation.objects.filter(status=UsageReservation.Status.ACTIVE).values_list("pk", flat=True):
        reservation_release(reservation_id=pk, reason="fuzz example leaked it")
    UsageMeter.objects.exclude(reserved=0).update(reserved=0)
