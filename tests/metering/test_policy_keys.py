"""The typed policy key registry: every key the product needs exists, and bad values are refused
wherever a rule is saved (here: validate_value and the policy_rule_set service)."""

from __future__ import annotations

import pytest

from catalog.models import ModelClass
from gateway_project.errors import BadRequest
from metering import services
from metering.models import Metric, PolicyRule, Window
from metering.policy_keys import (
    API_KEY_LIMIT_KEYS,
    METERED_KEYS,
    POLICY_KEYS,
    KeyKind,
    PolicyValueError,
    Subject,
    ValueType,
    enforced_amount,
    get_key,
    usd_to_micro,
    validate_value,
)

PER_REQUEST = ["max_tokens_in", "max_tokens_out", "agent_max_steps", "max_steps", "diagram_files_per_req",
               "retrieval_top_k", "max_api_calls"]
# key -> (kind, counted subject, metric, window)
METERED = {
    "tenant_tokens_per_day": (KeyKind.QUOTA, Subject.TENANT, Metric.TOKENS, Window.DAY),
    "tenant_tokens_per_month": (KeyKind.QUOTA, Subject.TENANT, Metric.TOKENS, Window.MONTH),
    "user_tokens_per_day": (KeyKind.QUOTA, Subject.USER, Metric.TOKENS, Window.DAY),
    "user_tokens_per_month": (KeyKind.QUOTA, Subject.USER, Metric.TOKENS, Window.MONTH),
    "tenant_cost_per_month_usd": (KeyKind.QUOTA, Subject.TENANT, Metric.COST, Window.MONTH),
    "tenant_api_calls_per_month": (KeyKind.QUOTA, Subject.TENANT, Metric.API_CALLS, Window.MONTH),
    "max_concurrent": (KeyKind.CONCURRENCY, Subject.TENANT, Metric.CONCURRENT, Window.NONE),
    "user_max_concurrent": (KeyKind.CONCURRENCY, Subject.USER, Metric.CONCURRENT, Window.NONE),
    "tenant_rpm": (KeyKind.RATE, Subject.TENANT, Metric.REQUESTS, Window.MINUTE),
    "user_rpm": (KeyKind.RATE, Subject.USER, Metric.REQUESTS, Window.MINUTE),
    "tenant_tpm": (KeyKind.RATE, Subject.TENANT, Metric.TOKENS, Window.MINUTE),
}


# --- the registry -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", PER_REQUEST)
def test_per_request_keys_exist(name):
    key = POLICY_KEYS[name]
    assert key.name == name and key.kind == KeyKind.PER_REQUEST and key.value_type == ValueType.INT
    assert key.subject == Subject.REQUEST and not key.is_metered
    assert key.unit and key.description


@pytest.mark.parametrize("name", sorted(METERED))
def test_metered_keys_exist_and_name_what_they_count(name):
    key = POLICY_KEYS[name]
    assert (key.kind, key.subject, key.metric, key.window) == METERED[name]
    assert key.is_metered and key.unit and key.description
    # The name says the counted subject.
    assert name.startswith("user_") == (key.subject == Subject.USER)


def test_the_registry_is_closed():
    assert set(POLICY_KEYS) == set(PER_REQUEST) | set(METERED) | set(API_KEY_LIMIT_KEYS) | {
        "allowed_model_classes", "fit_max_tokens_to_budget", "fit_min_max_tokens"}
    # An API key's own budget: set on the key, metered on its own meters, never from a policy rule.
    assert set(API_KEY_LIMIT_KEYS) == {"key_tokens_per_day", "key_tokens_per_month", "key_cost_per_day_usd",
                                       "key_cost_per_month_usd"}
    assert not set(API_KEY_LIMIT_KEYS) & {k.name for k in METERED_KEYS}
    assert POLICY_KEYS["allowed_model_classes"].value_type == ValueType.MODEL_CLASSES
    assert POLICY_KEYS["tenant_cost_per_month_usd"].value_type == ValueType.USD


@pytest.mark.parametrize("name", ["", "max_tokens", "MAX_TOKENS_OUT", "tenant_tokens_per_week", "max_tokens_out "])
def test_unknown_key_refused(name):
    with pytest.raises(PolicyValueError, match="Unknown policy key"):
        get_key(name)
    with pytest.raises(PolicyValueError, match="Unknown policy key"):
        validate_value(name, 10)


# --- integers ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, expected", [(0, 0), (1, 1), (4096, 4096), ("4096", 4096), (" 12 ", 12),
                                           (10**12, 10**12)])
def test_int_values_accepted(raw, expected):
    assert validate_value("max_tokens_out", raw) == expected
    assert type(validate_value("tenant_tokens_per_month", raw)) is int


@pytest.mark.parametrize("raw", [True, False, 1.0, 2.5, "1.5", "abc", "", "1e3", "--5", "²", None, [1], {"v": 1}])
def test_int_wrong_types_refused(raw):
    with pytest.raises(PolicyValueError, match="whole number"):
        validate_value("max_tokens_out", raw)


@pytest.mark.parametrize("raw", [-1, "-1", -(10**9)])
def test_int_negative_refused(raw):
    with pytest.raises(PolicyValueError, match="cannot be negative"):
        validate_value("tenant_tokens_per_day", raw)


# --- USD -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw, canonical, micro", [
    ("12.50", "12.5", 12_500_000), ("25", "25", 25_000_000), (25, "25", 25_000_000), ("0", "0", 0),
    ("0.000001", "0.000001", 1), ("2500", "2500", 2_500_000_000), (" 7.25 ", "7.25", 7_250_000),
])
def test_usd_values_accepted_and_enforced_in_micro_usd(raw, canonical, micro):
    stored = validate_value("tenant_cost_per_month_usd", raw)
    assert stored == canonical and isinstance(stored, str)  # a string: a JSON float would round
    assert enforced_amount("tenant_cost_per_month_usd", stored) == micro
    assert usd_to_micro(stored) == micro and type(usd_to_micro(stored)) is int


@pytest.mark.parametrize("raw", ["0.0000001", "12.1234567", "0.0000005"])
def test_usd_more_than_six_decimals_refused(raw):
    with pytest.raises(PolicyValueError, match="more than 6 decimal places"):
        validate_value("tenant_cost_per_month_usd", raw)


@pytest.mark.parametrize("raw", ["abc", "", "12,50", "$12", "NaN", "Infinity", "-Infinity", "sNaN"])
def test_usd_not_an_amount_refused(raw):
    with pytest.raises(PolicyValueError, match="not an amount of USD"):
        validate_value("tenant_cost_per_month_usd", raw)


@pytest.mark.parametrize("raw", [True, None, ["12"], {"usd": 12}])
def test_usd_wrong_types_refused(raw):
    with pytest.raises(PolicyValueError, match="amount of USD"):
        validate_value("tenant_cost_per_month_usd", raw)


@pytest.mark.parametrize("raw", ["-1", -5, "-0.01"])
def test_usd_negative_refused(raw):
    with pytest.raises(PolicyValueError, match="cannot be negative"):
        validate_value("tenant_cost_per_month_usd", raw)


def test_int_keys_are_enforced_as_written():
    assert enforced_amount("tenant_tokens_per_month", 5_000) == 5_000


# --- model classes ---------------------------------------------------------------------------------


def test_model_classes_accepted(catalog):
    assert validate_value("allowed_model_classes", "BASE_S,BASE_M") == ["BASE_S", "BASE_M"]
    assert validate_value("allowed_model_classes", " BASE_S , PRO_M ,") == ["BASE_S", "PRO_M"]
    assert validate_value("allowed_model_classes", ["ADVANCED"]) == ["ADVANCED"]


@pytest.mark.parametrize("raw", ["GOLD", "BASE_S,GOLD", ["base_s"], ["PRO_M", "PRO_XL"]])
def test_unknown_model_classes_refused(catalog, raw):
    with pytest.raises(PolicyValueError, match="Unknown model classes"):
        validate_value("allowed_model_classes", raw)


@pytest.mark.parametrize("raw", ["", " , ", [], [1], [None], 3, None, {"BASE_S": True}])
def test_model_classes_wrong_types_refused(catalog, raw):
    with pytest.raises(PolicyValueError, match="list of model class codes"):
        validate_value("allowed_model_classes", raw)


def test_model_classes_follow_the_catalog(catalog):
    ModelClass.objects.create(code="ULTRA", name="Ultra", rank=99)
    assert validate_value("allowed_model_classes", "ULTRA") == ["ULTRA"]


# --- every save path goes through the registry: the service --------------------------------------


@pytest.mark.parametrize("kwargs, message", [
    ({"key": "max_tokens", "value": 5}, "Unknown policy key"),
    ({"key": "max_tokens_out", "value": True}, "whole number"),
    ({"key": "max_tokens_out", "value": 1.5}, "whole number"),
    ({"key": "max_tokens_out", "value": -1}, "negative"),
    ({"key": "tenant_cost_per_month_usd", "value": "0.0000001"}, "6 decimal"),
    ({"key": "allowed_model_classes", "value": "GOLD"}, "Unknown model classes"),
    ({"key": "max_tokens_out", "value": 5, "when_quota_key": "max_tokens_in", "when_usage_percent_gte": 90},
     "not a quota key"),
    ({"key": "max_tokens_out", "value": 5, "when_quota_key": "tenant_rpm", "when_usage_percent_gte": 90},
     "not a quota key"),
    ({"key": "max_tokens_out", "value": 5, "when_quota_key": "tenant_tokens_per_month"}, "percentage"),
    ({"key": "max_tokens_out", "value": 5, "when_quota_key": "tenant_tokens_per_month",
      "when_usage_percent_gte": 101}, "percentage"),
    ({"key": "max_tokens_out", "value": 5, "when_usage_percent_gte": 90}, "quota key"),
    ({"key": "max_tokens_out", "value": 5, "weekdays": [7]}, "weekdays"),
    ({"key": "max_tokens_out", "value": 5, "weekdays": []}, "weekdays"),
    ({"key": "max_tokens_out", "value": 5, "timezone_name": "Mars/Olympus"}, "time zone"),
])
def test_policy_rule_set_refuses_invalid_rules(catalog, kwargs, message):
    before = PolicyRule.objects.count()
    with pytest.raises(BadRequest, match=message) as refused:
        services.policy_rule_set(scope="GLOBAL", **kwargs)
    assert refused.value.code == "invalid_policy" and refused.value.status_code == 400
    assert PolicyRule.objects.count() == before


def test_policy_rule_set_stores_canonical_values_and_updates_in_place(catalog):
    rule = services.policy_rule_set(scope="GLOBAL", key="tenant_cost_per_month_usd", value="12.50")
    assert rule.value == "12.5"
    again = services.policy_rule_set(scope="GLOBAL", key="tenant_cost_per_month_usd", value="13")
    assert again.pk == rule.pk and PolicyRule.objects.get(pk=rule.pk).value == "13"
    ints = services.policy_rule_set(scope="GLOBAL", key="max_tokens_out", value="2048")
    assert PolicyRule.objects.get(pk=ints.pk).value == 2048
