"""Which candidates can serve a request: the rule for parameters across fallback.

A request names parameters (`ChatRequest.asked()`); each provider says which of them it cannot
honour (`Provider.unsupported`). Before admission, the candidates whose provider cannot serve the
request are dropped, so the router never falls back onto a provider that would silently ignore a
parameter. If none is left, the request is a 400 `unsupported_parameter` naming the parameters and
the providers, and nothing is held or charged. The worst-case holds are still those of the whole
candidate list the policy allowed (a superset: never less than the worst case of what remains).
"""

from __future__ import annotations

from typing import Any

from gateway_project.errors import BadRequest
from llm.providers.base import NO_OPTIONS, ChatRequest, GenerationOptions, has_images
from llm.providers.registry import servable


def probe(messages: list[dict[str, Any]], options: GenerationOptions) -> ChatRequest:
    """A stand-in request with the call's messages and options (model and max_tokens do not matter)."""
    return ChatRequest(model="", messages=messages, max_tokens=1, options=options)


def narrow(decision: Any, messages: list[dict[str, Any]], options: GenerationOptions) -> None:
    """Drop from `decision.candidates` the models whose provider cannot serve these options; raise
    400 unsupported_parameter when none can. Plain chats (the common case) cost nothing here."""
    if options == NO_OPTIONS and not has_images(messages):
        return
    request = probe(messages, options)
    refusals: dict[str, list[str]] = {}
    keep = []
    for model, provider in servable(decision.candidates):
        # A provider that cannot say what it supports is trusted with nothing beyond plain chat.
        check = getattr(provider, "unsupported", None)
        missing = check(request) if check is not None else request.asked()
        if missing:
            refusals.setdefault(provider.name, missing)
        else:
            keep.append(model)
    if keep:
        decision.candidates = [m for m in decision.candidates if any(m is k for k in keep)]
        return
    if not refusals:
        return  # nothing servable at all: the pipeline answers no_provider_available as before
    detail = "; ".join(f"{', '.join(names)} not supported by {provider}" for provider, names in refusals.items())
    first = next(iter(refusals.values()))[0]
    raise BadRequest(f"Unsupported parameter '{first}' for the providers that could serve this request ({detail}).",
                     code="unsupported_parameter")
