"""The one typed registry of policy keys: name, value type, unit, counted subject, meaning.

Anything that saves a `PolicyRule` (admin, commands, API) validates through `validate_value`.

How a key combines with tasks:
- per-request and access keys: one effective value per task; a task-specific rule beats an
  all-tasks rule of the same scope.
- quota, concurrency and rate keys: a rule naming a task limits that task's meter; a rule
  without a task limits all tasks together. Both kinds are enforced when both exist.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from metering.models import Metric, Window


class KeyKind(StrEnum):
    PER_REQUEST = "per_request"
    QUOTA = "quota"
    CONCURRENCY = "concurrency"
    RATE = "rate"
    ACCESS = "access"


class ValueType(StrEnum):
    INT = "int"
    USD = "usd"  # written in dollars ("25" or "12.50"), enforced as integer micro-USD
    MODEL_CLASSES = "model_classes"
    BOOL = "bool"  # a switch: true/false (also on/off, yes/no, 1/0)


class Subject(StrEnum):
    REQUEST = "request"
    TENANT = "tenant"
    USER = "user"
    KEY = "key"  # an API key's own budget: set on the key (ApiKey.limits), counted on its own meters


class PolicyValueError(ValueError):
    pass


@dataclass(frozen=True)
class PolicyKey:
    name: str
    kind: KeyKind
    value_type: ValueType
    unit: str
    subject: Subject
    description: str
    metric: Metric | None = None
    window: Window | None = None
    # What applies when no rule sets the key (None: the key does nothing without a rule).
    default: Any = None

    @property
    def is_metered(self) -> bool:
        return self.metric is not None


def _key(*args: Any, **kwargs: Any) -> PolicyKey:
    return PolicyKey(*args, **kwargs)


_R, _T, _U, _K = Subject.REQUEST, Subject.TENANT, Subject.USER, Subject.KEY
_KEYS = [
    _key("max_tokens_in", KeyKind.PER_REQUEST, ValueType.INT, "tokens", _R, "Most input tokens one request may send."),
    _key("max_tokens_out", KeyKind.PER_REQUEST, ValueType.INT, "tokens", _R,
         "Most output tokens per request (per step for agents); larger requests are clamped."),
    _key("agent_max_steps", KeyKind.PER_REQUEST, ValueType.INT, "steps", _R, "Most agent steps in one drafting run."),
    _key("max_steps", KeyKind.PER_REQUEST, ValueType.INT, "steps", _R, "Most generation + repair steps per request."),
    _key("diagram_files_per_req", KeyKind.PER_REQUEST, ValueType.INT, "files", _R, "Most diagram files per request."),
    _key("retrieval_top_k", KeyKind.PER_REQUEST, ValueType.INT, "results", _R, "Most prior-art candidates kept."),
    _key("max_api_calls", KeyKind.PER_REQUEST, ValueType.INT, "calls", _R,
         "Most outbound API calls (LLM and search) one request may make."),
    _key("tenant_tokens_per_day", KeyKind.QUOTA, ValueType.INT, "tokens", _T, "Tenant tokens (in + out) per UTC day.",
         Metric.TOKENS, Window.DAY),
    _key("tenant_tokens_per_month", KeyKind.QUOTA, ValueType.INT, "tokens", _T, "Tenant tokens per calendar month.",
         Metric.TOKENS, Window.MONTH),
    _key("user_tokens_per_day", KeyKind.QUOTA, ValueType.INT, "tokens", _U, "One user's tokens per UTC day.",
         Metric.TOKENS, Window.DAY),
    _key("user_tokens_per_month", KeyKind.QUOTA, ValueType.INT, "tokens", _U, "One user's tokens per month.",
         Metric.TOKENS, Window.MONTH),
    _key("tenant_cost_per_month_usd", KeyKind.QUOTA, ValueType.USD, "USD", _T,
         "Tenant spend per month; enforced in integer micro-USD.", Metric.COST, Window.MONTH),
    _key("tenant_api_calls_per_month", KeyKind.QUOTA, ValueType.INT, "calls", _T,
         "Tenant outbound API calls (LLM and search) per month.", Metric.API_CALLS, Window.MONTH),
    _key("max_concurrent", KeyKind.CONCURRENCY, ValueType.INT, "calls", _T, "Tenant calls in flight at once.",
         Metric.CONCURRENT, Window.NONE),
    _key("user_max_concurrent", KeyKind.CONCURRENCY, ValueType.INT, "calls", _U, "One user's calls in flight at once.",
         Metric.CONCURRENT, Window.NONE),
    _key("tenant_rpm", KeyKind.RATE, ValueType.INT, "requests/min", _T, "Tenant requests per minute.",
         Metric.REQUESTS, Window.MINUTE),
    _key("user_rpm", KeyKind.RATE, ValueType.INT, "requests/min", _U, "One user's requests per minute.",
         Metric.REQUESTS, Window.MINUTE),
    _key("tenant_tpm", KeyKind.RATE, ValueType.INT, "tokens/min", _T, "Tenant tokens per minute.",
         Metric.TOKENS, Window.MINUTE),
    _key("fit_max_tokens_to_budget", KeyKind.PER_REQUEST, ValueType.BOOL, "on/off", _R,
         "Budget fitting: when the tightest remaining token or cost quota cannot take the worst case, shrink "
         "max_tokens to what it can take (not below fit_min_max_tokens) instead of refusing. Default: on.",
         default=True),
    _key("fit_min_max_tokens", KeyKind.PER_REQUEST, ValueType.INT, "tokens", _R,
         "Budget fitting never shrinks max_tokens below this; a call that cannot have this many is refused. "
         "Default: 256.", default=256),
    _key("allowed_model_classes", KeyKind.ACCESS, ValueType.MODEL_CLASSES, "model classes", _R,
         "Narrows the plan's model classes (e.g. only the cheaper ones once a quota is nearly used)."),
    # An API key's own budget, on top of every tenant and user limit (DESIGN §4). Set on the key
    # (ApiKey.limits: API, admin, command), not in a policy rule; meters and holds as for every quota.
    _key("key_tokens_per_day", KeyKind.QUOTA, ValueType.INT, "tokens", _K, "One API key's tokens per UTC day.",
         Metric.TOKENS, Window.DAY),
    _key("key_tokens_per_month", KeyKind.QUOTA, ValueType.INT, "tokens", _K, "One API key's tokens per month.",
         Metric.TOKENS, Window.MONTH),
    _key("key_cost_per_day_usd", KeyKind.QUOTA, ValueType.USD, "USD", _K,
         "One API key's spend per UTC day; enforced in integer micro-USD.", Metric.COST, Window.DAY),
    _key("key_cost_per_month_usd", KeyKind.QUOTA, ValueType.USD, "USD", _K,
         "One API key's spend per month; enforced in integer micro-USD.", Metric.COST, Window.MONTH),
]

POLICY_KEYS: dict[str, PolicyKey] = {k.name: k for k in _KEYS}
# The keys policy rules meter. An API key's budget keys are metered from the key's own limits instead.
METERED_KEYS: list[PolicyKey] = [k for k in _KEYS if k.is_metered and k.subject != Subject.KEY]
API_KEY_LIMIT_KEYS: dict[str, PolicyKey] = {k.name: k for k in _KEYS if k.subject == Subject.KEY}


def get_key(name: str) -> PolicyKey:
    try:
        return POLICY_KEYS[name]
    except KeyError:
        raise PolicyValueError(
            f"Unknown policy key '{name}'. Known keys: {', '.join(sorted(POLICY_KEYS))}."
        ) from None


# Meters add limits, holds and usage in BIGINT columns: a limit past this (tokens, calls or
# micro-USD) could overflow them, and no real limit comes near it.
MAX_VALUE = 10**15


def usd_to_micro(value: Any) -> int:
    try:
        amount = Decimal(str(value))
    except (InvalidOperation, ValueError):
        raise PolicyValueError(f"'{value}' is not an amount of USD.") from None
    if not amount.is_finite():  # NaN and Infinity parse as Decimals but are no amount
        raise PolicyValueError(f"'{value}' is not an amount of USD.")
    if amount.adjusted() > 15:  # e.g. "1e999999": its micro-USD would overflow the decimal context
        raise PolicyValueError(f"'{value}' is too large an amount of USD.")
    micro = amount * 1_000_000
    if micro != micro.to_integral_value():
        raise PolicyValueError(f"'{value}' has more than 6 decimal places.")
    return int(micro)


_BOOL_WORDS = {"true": True, "on": True, "yes": True, "1": True, "false": False, "off": False, "no": False,
               "0": False}


def validate_value(name: str, value: Any, *, on_api_key: bool = False) -> Any:
    """Return the canonical JSON value for the key, or raise PolicyValueError with a helpful message.
    An API key's budget keys are set on the key (`on_api_key`), and only those are."""
    key = get_key(name)
    if (key.subject == Subject.KEY) != on_api_key:
        if on_api_key:
            raise PolicyValueError(f"'{name}' is not an API key limit; an API key takes "
                                   f"{', '.join(sorted(API_KEY_LIMIT_KEYS))}.")
        raise PolicyValueError(f"'{name}' is an API key's own budget: set it on the key, not in a policy rule.")
    if key.value_type == ValueType.INT:
        if isinstance(value, str) and re.fullmatch(r"-?[0-9]{1,30}", value.strip()):
            value = int(value.strip())
        if isinstance(value, bool) or not isinstance(value, int):
            raise PolicyValueError(f"'{name}' takes a whole number of {key.unit}, not {value!r}.")
        if value < 0:
            raise PolicyValueError(f"'{name}' cannot be negative.")
        if value > MAX_VALUE:
            raise PolicyValueError(f"'{name}' is at most {MAX_VALUE:,} {key.unit}.")
        return value
    if key.value_type == ValueType.USD:
        if isinstance(value, bool) or not isinstance(value, (int, str, float)):
            raise PolicyValueError(f"'{name}' takes an amount of USD such as \"25\" or \"12.50\".")
        micro = usd_to_micro(value)
        if micro < 0:
            raise PolicyValueError(f"'{name}' cannot be negative.")
        if micro > MAX_VALUE:
            raise PolicyValueError(f"'{name}' is at most {MAX_VALUE // 1_000_000:,} USD.")
        # Stored as a string: a JSON float would round.
        return str(Decimal(micro) / 1_000_000)
    if key.value_type == ValueType.BOOL:
        if isinstance(value, str) and value.strip().lower() in _BOOL_WORDS:
            return _BOOL_WORDS[value.strip().lower()]
        if isinstance(value, int) and value in (0, 1):  # True and False are ints too
            return bool(value)
        raise PolicyValueError(f"'{name}' is a switch: true or false (also on/off, yes/no, 1/0), not {value!r}.")
    if key.value_type == ValueType.MODEL_CLASSES:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(",") if part.strip()]
        if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
            raise PolicyValueError(f"'{name}' takes a list of model class codes, e.g. [\"BASE_S\", \"BASE_M\"].")
        from catalog.models import ModelClass

        known = set(ModelClass.objects.values_list("code", flat=True))
        unknown = [v for v in value if v not in known]
        if unknown:
            raise PolicyValueError(f"Unknown model classes {unknown}; known: {sorted(known)}.")
        return value
    raise PolicyValueError(f"'{name}' has no validator.")  # pragma: no cover - registry is closed


def api_key_limits_validate(limits: dict) -> dict:
    """An API key's own budget ({key: value}, keys of subject KEY), canonical; PolicyValueError otherwise."""
    return {name: validate_value(name, value, on_api_key=True) for name, value in sorted(limits.items())}


def enforced_amount(name: str, value: Any) -> Any:
    """The value in the unit the meters count (micro-USD for USD keys)."""
    key = get_key(name)
    if key.value_type == ValueType.USD:
        return usd_to_micro(value)
    return value
