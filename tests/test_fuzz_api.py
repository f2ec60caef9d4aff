"""Property-based tests of the REST API's input surface: whatever a client sends, never a 5xx.

Every operation of /api/ that takes a path parameter, a query parameter or a body (as the OpenAPI
generator sees them, so a new endpoint is covered the day it is added), plus the three task endpoints,
gets arbitrary input shaped after its own serializer, mixed with any JSON and with bytes that are no JSON.
The properties: status < 500, every refusal in the one error shape, and no hold left behind.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import hypothesis
import pytest
from drf_spectacular.drainage import GENERATOR_STATS
from drf_spectacular.generators import EndpointEnumerator, SchemaGenerator
from drf_spectacular.plumbing import ComponentRegistry
from hypothesis import given
from hypothesis import strategies as st
from rest_framework import serializers
from rest_framework.test import APIClient

from catalog.models import Task
from metering.alerts.models import AlertChannel, Notification
from metering.policy_keys import POLICY_KEYS
from tenants import services as tenant_services
from tenants.models import User
from tenants.tokens import tokens_for_user
from tests.conftest import PASSWORD, Persona
from tests.fuzz import (
    FUZZ,
    any_text,
    assert_no_holds,
    assert_well_formed,
    bodies,
    content_types,
    json_values,
    numbers,
    query_text,
    release_leftover_holds,
)

pytestmark = pytest.mark.django_db(transaction=True)

# Bounded, so the whole module runs in well under a minute: bodies get the most, task pipelines (each
# valid example runs one) the fewest.
BODY_EXAMPLES, OTHER_EXAMPLES, TASK_EXAMPLES = 100, 60, 40


@dataclass(frozen=True)
class Operation:
    method: str
    path: str  # with {name} placeholders
    path_params: tuple[str, ...] = ()
    query: tuple[tuple[str, str], ...] = ()  # (name, OpenAPI type)
    body: tuple[tuple[str, Any], ...] = field(default=(), hash=False)  # (name, DRF field)
    has_body: bool = False

    def __str__(self) -> str:
        return f"{self.method} {self.path}"


def _rest_operations() -> list[Operation]:
    generator = SchemaGenerator()
    found = []
    with GENERATOR_STATS.silence():
        for path, regex, method, callback in EndpointEnumerator().get_api_endpoints():
            if not path.startswith("/api/"):
                continue
            view = generator.create_view(callback, method)
            operation = view.schema.get_operation(path, regex, "", method, ComponentRegistry()) or {}
            params = operation.get("parameters", [])
            path_params = tuple(p["name"] for p in params if p["in"] == "path")
            query = tuple((p["name"], p.get("schema", {}).get("type", "string")) for p in params if p["in"] == "query")
            body: tuple = ()
            has_body = method in {"POST", "PUT", "PATCH"} and bool(operation.get("requestBody"))
            if has_body:
                serializer = view.schema.get_request_serializer()
                if isinstance(serializer, type):
                    serializer = serializer()
                if isinstance(serializer, serializers.Serializer):
                    body = tuple((name, f) for name, f in serializer.fields.items() if not f.read_only)
            if path_params or query or has_body:
                found.append(Operation(method, path, path_params, query, body, has_body))
    return found


TASK_FIELDS = {
    "/api/prior-art/": ("description", "claims", "date_cutoff", "jurisdictions", "max_results", "model", "max_tokens"),
    "/api/drafting/": ("disclosure", "prior_art", "claim_style", "jurisdiction", "sections", "model", "max_tokens"),
    "/api/diagrams/": ("description", "kinds", "format", "files", "model", "max_tokens"),
}


def _task_operations() -> list[Operation]:
    return [Operation("POST", path, query=(("stream", "boolean"),), body=tuple((n, None) for n in names),
                      has_body=True) for path, names in TASK_FIELDS.items()]


def pytest_generate_tests(metafunc):
    if "operation" in metafunc.fixturenames:
        operations = _rest_operations() + _task_operations()
        metafunc.parametrize("operation", operations, ids=[str(o) for o in operations])


# --- values a field could be sent ----------------------------------------------------------------------------------

TASK_INTS = {"max_results", "files", "max_tokens"}
TASK_LISTS = {"jurisdictions", "kinds", "sections", "prior_art"}
KNOWN_TEXT = {
    # Values that get past the first checks, so the examples reach the services behind them.
    "kind": list(AlertChannel.Kind.values), "role": list(User.Role.values), "key": sorted(POLICY_KEYS),
    "task": ["LLM1_PRIOR_ART", "LLM2_DRAFT", "LLM3_DIAGRAM"],
    "target": ["https://hooks.example.com/T1/abc", "http://[::1", "http://[::1]/x", "https://a:99999/",
               "https://user:pw@example.com/", "http://127.0.0.1/", "ftp://example.com/", "https://" + "a" * 300],
    "description": ["A folding hinge with a latch", "x"], "disclosure": ["A folding hinge with a latch"],
    "claims": ["1. A hinge comprising a pin."], "claim_style": ["apparatus", "method"], "jurisdiction": ["US", "EP"],
    "format": ["mermaid", "plantuml"], "kinds": ["flowchart", "sequence"], "date_cutoff": ["2020-01-01", "0001-01-01"],
    "jurisdictions": ["US", "EP"], "sections": ["claims", "abstract"],
    "wanted_value": ["25", "12.50", "1e999999", "-1", "BASE_S,BASE_M"], "model": ["auto", "BASE_S", "PRO_M"],
    "email": ["a@example.com", "@", "a@b"], "username": ["fuzz-admin"], "password": [PASSWORD],
}


def _field_values(name: str, drf_field: Any) -> tuple[st.SearchStrategy, st.SearchStrategy]:
    """(a value that passes the field's own checks, any value) for one input field."""
    if name in KNOWN_TEXT:
        valid: st.SearchStrategy = st.sampled_from(KNOWN_TEXT[name])
    elif isinstance(drf_field, serializers.BooleanField):
        valid = st.booleans()
    elif isinstance(drf_field, serializers.ChoiceField):
        valid = st.sampled_from(list(drf_field.choices))
    elif isinstance(drf_field, serializers.EmailField):
        valid = st.emails()
    elif isinstance(drf_field, serializers.JSONField):
        valid = json_values
    elif isinstance(drf_field, (serializers.IntegerField, serializers.FloatField)) or name in TASK_INTS:
        valid = st.integers(1, 20)
    elif drf_field is None and name in TASK_LISTS:
        valid = st.lists(st.sampled_from(KNOWN_TEXT.get(name, ["x"])), min_size=1, max_size=3)
    else:
        max_size = getattr(drf_field, "max_length", None) or 40
        valid = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=max_size)
    return valid, st.one_of(valid, any_text, numbers, json_values)


def _query_values(kind: str) -> st.SearchStrategy[str]:
    special = st.sampled_from(["", "0", "-1", "1", "2", "last", "99999999999999999999", "1.5", "true", "yes", "NaN",
                               "0001-01-01", "9999-12-31", "2026-02-30", "2026-13-45", "%ED%A0%80", "%00", "%FF%FE",
                               "task", "user", "day", "model", "tenant"])
    dates = st.dates().map(lambda d: d.isoformat())
    return st.one_of(special, dates, query_text.map(quote), st.integers().map(str))


def _path_ids(existing: list[int]) -> st.SearchStrategy[int]:
    return st.one_of(st.sampled_from(existing), st.integers(0, 50),
                     st.sampled_from([2**31, 2**63 - 1, 2**63, 2**64, 10**30]), st.integers(0, 10**40))


@st.composite
def requests(draw, operation: Operation, ids: list[int]) -> tuple[str, str, bytes | None, str]:
    path = operation.path
    for name in operation.path_params:
        path = path.replace("{" + name + "}", str(draw(_path_ids(ids))))
    names = [n for n, _ in operation.query] + ["page", "page_size", "format"]
    query = draw(st.dictionaries(st.one_of(st.sampled_from(names), query_text.map(quote)),
                                 st.one_of(*(_query_values(t) for _, t in operation.query or [("", "string")])),
                                 max_size=4))
    if query:
        path += "?" + "&".join(f"{quote(k) if '%' not in k else k}={v}" for k, v in query.items())
    if not operation.has_body:
        return operation.method, path, None, ""
    fields = {name: _field_values(name, f) for name, f in operation.body}
    return operation.method, path, draw(bodies(fields)), draw(content_types)


# --- the persona and its objects ----------------------------------------------------------------------------------


@pytest.fixture
def fuzz_world(catalog, settings) -> tuple[Persona, list[int]]:
    """A tenant admin with a member, an alert channel and a notification, so ids can hit real rows."""
    settings.AUTH_THROTTLE_ATTEMPTS = 10**9  # the fuzzed logins would otherwise only ever see the throttle
    issued = tenant_services.ati_token_issue(plan_code="PRO")
    tenant, admin = tenant_services.tenant_signup(ati_secret=issued.secret, tenant_name="Fuzz Patents",
                                                  username="fuzz-admin", email="fuzz@example.com", password=PASSWORD)
    member = tenant_services.user_create(tenant=tenant, username="fuzz-member", email="m@example.com",
                                         password=PASSWORD)
    channel = AlertChannel.objects.create(tenant=tenant, kind=AlertChannel.Kind.EMAIL, name="ops")
    note = Notification.objects.create(tenant=tenant, user=admin, kind="QUOTA_WARNING", title="t", body="b")
    KNOWN_TEXT["refresh"] = [tokens_for_user(admin)["refresh"], "a.b.c"]
    return Persona(user=admin, tenant=tenant), [admin.pk, member.pk, channel.pk, note.pk, Task.objects.first().pk]


def _send(client: APIClient, method: str, path: str, body: bytes | None, content_type: str):
    if body is None:
        return getattr(client, method.lower())(path)
    return client.generic(method, path, data=body, content_type=content_type)


def test_every_api_operation_is_fuzzed():
    """The generator sees the REST API: a refactoring that hid it would silently fuzz nothing."""
    names = {str(o) for o in _rest_operations()}
    assert {"GET /api/usage/", "GET /api/usage/logs/", "POST /api/tenant/users/", "POST /api/auth/token/",
            "PATCH /api/alert-channels/{channel_id}/", "POST /api/quota-requests/"} <= names, names


def test_no_input_reaches_a_5xx(operation: Operation, fuzz_world):
    persona, ids = fuzz_world
    client = persona.client
    examples = (TASK_EXAMPLES if operation.path in TASK_FIELDS else BODY_EXAMPLES if operation.has_body
                else OTHER_EXAMPLES)

    @hypothesis.settings(FUZZ, max_examples=examples)
    @given(request=requests(operation, ids))
    def check(request):
        method, path, body, content_type = request
        try:
            response = _send(client, method, path, body, content_type)
            assert_well_formed(response)
            assert_no_holds()
        finally:
            release_leftover_holds()

    check()
