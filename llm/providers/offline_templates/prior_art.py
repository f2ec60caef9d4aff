"""Offline answers for the prior-art adapter: search queries from the description, and a re-rank.

Both are deterministic functions of the prompt, shaped like what a real model is asked for:
`prior_art_queries` -> a JSON array of keyword queries; `prior_art_rerank` -> `{"ranking": [{"id",
"score", "rationale"}]}` over the candidate ids found in the prompt, scored by word overlap.
"""

from __future__ import annotations

import json
import re
from typing import Any

from llm.providers.offline_templates import register
from llm.search.common import key_terms, lexical_score, terms

_BLOCK = re.compile(r"<<<\n?(.*?)\n?>>>", re.DOTALL)
_CANDIDATE = re.compile(r"^\[(C\d+)\][^\n]*\n?(?:(?!\n\[C\d+\]).)*", re.DOTALL | re.MULTILINE)


def _user_text(messages: list[dict[str, Any]]) -> str:
    return "\n".join(m["content"] for m in messages if m.get("role") == "user" and isinstance(m.get("content"), str))


def _description(text: str) -> str:
    match = _BLOCK.search(text)
    return match.group(1) if match else text


@register("prior_art_queries")
def queries(messages: list[dict[str, Any]]) -> str:
    words = key_terms(_description(_user_text(messages)), limit=12)
    if not words:
        return "[]"
    plan = [words[0:4], words[4:8], words[0:2] + words[8:10]]
    out: list[str] = []
    for group in plan:
        query = " ".join(group)
        if len(group) >= 2 and query not in out:
            out.append(query)
    return json.dumps(out or [" ".join(words)])


@register("prior_art_rerank")
def rerank(messages: list[dict[str, Any]]) -> str:
    text = _user_text(messages)
    description = _description(text)
    wanted = set(key_terms(description))
    after = text[_BLOCK.search(text).end():] if _BLOCK.search(text) else text
    scored = []
    for order, match in enumerate(_CANDIDATE.finditer(after)):
        candidate = match.group(0)
        score = lexical_score(wanted, candidate)
        shared = [w for w in key_terms(description) if w in set(terms(candidate))][:3]
        rationale = (f"Shares {', '.join(repr(w) for w in shared)} with the invention description."
                     if shared else "Little overlap with the invention's key terms.")
        scored.append((-score, order, {"id": match.group(1), "score": score, "rationale": rationale}))
    return json.dumps({"ranking": [entry for _, _, entry in sorted(scored)]})


_CLAUSE = re.compile(r"(?<=[.!?;])\s+")


@register("prior_art_features")
def features(messages: list[dict[str, Any]]) -> str:
    """The disclosure's key features: its sentences (and ;-clauses) that carry two or more content words."""
    description = _description(_user_text(messages))
    out = [" ".join(c.split()).strip(" .;") for c in _CLAUSE.split(description)]
    return json.dumps([c for c in out if len(set(terms(c))) >= 2][:8])
