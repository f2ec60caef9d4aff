"""The claim chart of a prior-art answer: for each claim element, the references that disclose it, with
the passage and a short rationale, and the elements no reference covers -- the table a patent attorney
or examiner reads first.

Elements come from the claims when given (each claim split at its transition word and at `;`), else
from the features the LLM extracted from the disclosure (else its sentences). Disclosure is judged by
lexical overlap of an element's content words with a reference's title and abstract: deterministic,
so the embedded default (offline provider) shows the same chart for the same answer; an element is
disclosed by a reference sharing at least DISCLOSED_SHARE of its key terms.
"""

from __future__ import annotations

import re
from typing import Any

from llm.search.common import snippet, terms

DISCLOSED_SHARE = 0.5
TOP_REFERENCES = 3
MAX_ELEMENTS = 40
MAX_FEATURES = 12
_CLAIM_START = re.compile(r"(?m)^\s*(\d{1,3})\s*[.)]\s+")
_TRANSITION = re.compile(r"\b(comprising|consisting of|consisting essentially of|including|characterized in that)"
                         r"\s*:?", re.IGNORECASE)
_SPLIT = re.compile(r";|\n+|,?\s+\bwherein\b|,?\s+\band\s+(?=(?:a|an|the)\s)", re.IGNORECASE)
_SENTENCE = re.compile(r"(?<=[.!?])\s+")


def _claims(text: str) -> list[tuple[int, str]]:
    starts = list(_CLAIM_START.finditer(text))
    if not starts:
        return [(1, text.strip())]
    out = []
    for index, match in enumerate(starts):
        end = starts[index + 1].start() if index + 1 < len(starts) else len(text)
        out.append((int(match.group(1)), text[match.end():end].strip()))
    return out


def _letters(index: int) -> str:
    return chr(ord("a") + index) if index < 26 else f"z{index}"


def claim_elements(claims: str, description: str, *, features: list[str] | None = None) -> dict[str, Any]:
    """{"basis": "claims" | "features" | "description", "elements": [{"id", "claim", "text"}]}."""
    elements: list[dict[str, Any]] = []
    if claims.strip():
        for number, body in _claims(claims):
            parts: list[str] = []
            transition = _TRANSITION.search(body)
            if transition:
                parts.append(body[:transition.start()].strip())  # the preamble
                body = body[transition.end():]
            parts.extend(p for p in _SPLIT.split(body))
            parts = [" ".join(p.split()).strip(" ,.:") for p in parts if p and terms(p)]
            for index, part in enumerate(parts):
                elements.append({"id": f"{number}{_letters(index)}", "claim": number, "text": part})
        return {"basis": "claims", "elements": elements[:MAX_ELEMENTS]}
    if features:
        return {"basis": "features", "elements": [{"id": f"F{i}", "claim": None, "text": f}
                                                  for i, f in enumerate(features[:MAX_FEATURES], 1)]}
    sentences = [" ".join(s.split()).strip() for s in _SENTENCE.split(description)]
    features = [s for s in sentences if len(set(terms(s))) >= 2][:MAX_FEATURES]
    return {"basis": "description",
            "elements": [{"id": f"F{i}", "claim": None, "text": s} for i, s in enumerate(features, 1)]}


def _best_passage(element_terms: set[str], text: str) -> tuple[str, list[str]]:
    best, shared_best = "", []
    for sentence in _SENTENCE.split(text):
        words = terms(sentence)
        shared = [w for w in dict.fromkeys(words) if w in element_terms]
        if len(shared) > len(shared_best):
            best, shared_best = sentence, shared
    return snippet(best, 300), shared_best


def claim_chart(elements: dict[str, Any], items: list[dict[str, Any]]) -> dict[str, Any]:
    """The chart over the ranked items (each with a private `_text`: title + abstract)."""
    rows = []
    uncovered = []
    for element in elements["elements"]:
        wanted = list(dict.fromkeys(terms(element["text"])))
        wanted_set = set(wanted)
        need = max(1, min(2, len(wanted_set)))
        matches = []
        for item in items:
            text = item.get("_text", "")
            found = wanted_set & set(terms(text))
            share = len(found) / len(wanted_set) if wanted_set else 0.0
            if len(found) < need or share < DISCLOSED_SHARE:
                continue
            passage, shared = _best_passage(wanted_set, text)
            shown = [w for w in wanted if w in found][:5]
            matches.append((-share, item["rank"], {
                "rank": item["rank"], "identifier": item["identifier"], "source": item["source"],
                "title": item["title"], "score": round(share, 4), "passage": passage or snippet(text, 300),
                "rationale": f"Discloses {len(found)} of the element's {len(wanted_set)} key terms: "
                             + ", ".join(repr(w) for w in shown) + ".",
                "passage_terms": shared,
            }))
        matches.sort(key=lambda m: (m[0], m[1]))
        references = [m[2] for m in matches[:TOP_REFERENCES]]
        rows.append({**element, "key_terms": wanted, "covered": bool(references), "references": references})
        if not references:
            uncovered.append(element["id"])
    return {"method": "lexical_overlap", "basis": elements["basis"], "elements": rows, "uncovered": uncovered,
            "covered": len(rows) - len(uncovered), "total": len(rows)}
