from __future__ import annotations

import json

from django import template

register = template.Library()


@register.filter
def usd(micro) -> str:
    """Integer micro-USD -> "$1,234.56" (sub-cent amounts keep their digits)."""
    if micro in (None, ""):
        return "-"
    dollars = int(micro) / 1_000_000
    return f"${dollars:,.2f}" if dollars >= 0.01 or dollars == 0 else f"${dollars:.6f}".rstrip("0")


@register.filter
def num(value) -> str:
    if value in (None, ""):
        return "-"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


@register.filter
def as_json(value) -> str:
    return json.dumps(value, default=str) if value is not None else "—"


@register.filter
def get(mapping, key):
    return mapping.get(key) if hasattr(mapping, "get") else None


@register.filter
def rule_value(value) -> str:
    """A rule's value as an operator types it: 4096, 12.50 (USD keys store text), BASE_S, BASE_M."""
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)
