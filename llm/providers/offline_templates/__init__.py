"""Deterministic, shaped answers for the offline provider.

A task adapter that needs structured output (claims, a Mermaid diagram, JSON) puts the marker
`offline-template: NAME` in its system message. Real providers ignore the marker; the offline
provider answers with the template's deterministic text, so the embedded default and the tests
run every pipeline end to end without a network. Templates live in the modules of this package.
"""

from __future__ import annotations

import importlib
import pkgutil
import re
from collections.abc import Callable
from typing import Any

Template = Callable[[list[dict[str, Any]]], str]
TEMPLATES: dict[str, Template] = {}
MARKER = re.compile(r"offline-template:\s*([a-z0-9_\-]+)")


def register(name: str) -> Callable[[Template], Template]:
    def decorate(function: Template) -> Template:
        TEMPLATES[name] = function
        return function

    return decorate


def _load() -> None:
    for module in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{module.name}")


def render(messages: list[dict[str, Any]]) -> str | None:
    """The templated answer for these messages, or None when no known marker is present."""
    if not TEMPLATES:
        _load()
    for message in messages:
        content = message.get("content")
        if message.get("role") in ("system", "developer") and isinstance(content, str):
            match = MARKER.search(content)
            if match and match.group(1) in TEMPLATES:
                return TEMPLATES[match.group(1)](messages)
    return None
