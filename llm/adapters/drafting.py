"""Patent drafting (LLM2_DRAFT): section by section, each an agent step under one reservation.

Steps are bounded by `agent_max_steps`; each step's output by `max_tokens_out`. Before
returning, the claims and abstract are checked (claims.py); when a check fails, one repair step
(within the step budget) regenerates the failing parts. Running out of steps returns the
sections drafted so far with a note, never an error.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from gateway_project.errors import BadRequest
from llm.adapters import claims as claim_checks
from llm.adapters.base import AdapterRun, BudgetExhausted, TaskAdapter

SECTIONS = ("title", "technical_field", "background", "summary", "brief_description_of_drawings",
            "detailed_description", "claims", "abstract")
HEADINGS = {
    "title": "Title", "technical_field": "Technical Field", "background": "Background",
    "summary": "Summary", "brief_description_of_drawings": "Brief Description of the Drawings",
    "detailed_description": "Detailed Description", "claims": "Claims", "abstract": "Abstract",
}
EP_HEADINGS = {**HEADINGS, "background": "Background Art", "summary": "Summary of Invention",
               "detailed_description": "Description of Embodiments"}
CLAIM_STYLES = ("apparatus", "method", "system")
JURISDICTIONS = ("US", "EP")
MAX_PRIOR_ART = 20
_CONTEXT_CHARS = 600  # of each earlier section shown to later steps

_GUIDANCE = {
    "title": "Write a concise title (at most 15 words). Answer with the title only.",
    "technical_field": "Write the technical field in one or two sentences.",
    "background": "Write the background: the problem and the known approaches, distinguishing the listed prior art "
                  "without admitting it as prior art beyond what is listed.",
    "summary": "Write the summary of the invention, one paragraph per aspect.",
    "brief_description_of_drawings": "Write a brief description of the drawings, one sentence per figure "
                                     "(FIG. 1, FIG. 2, ...).",
    "detailed_description": "Write the detailed description of embodiments, enabling a skilled person to carry "
                            "out the invention.",
    "claims": "Write the claims. Number them 1, 2, 3, ... without gaps, one claim per paragraph starting with its "
              "number. Start with an independent {style} claim; every dependent claim refers only to an earlier "
              "claim ({ref}).",
    "abstract": "Write the abstract in at most 150 words, a single paragraph.",
}


@dataclass
class DraftInput:
    disclosure: str
    prior_art: list[str] = field(default_factory=list)
    claim_style: str = "apparatus"
    jurisdiction: str = "US"
    sections: list[str] = field(default_factory=lambda: list(SECTIONS))


def _prior_art_item(item: Any) -> str:
    if isinstance(item, str) and item.strip():
        return " ".join(item.split())
    if isinstance(item, dict):
        parts = [str(item[k]).strip() for k in ("identifier", "title", "abstract") if item.get(k)]
        if parts:
            return " ".join(" — ".join(parts).split())
    raise BadRequest("Each 'prior_art' item must be a non-empty string or an object with identifier/title/abstract.",
                     code="invalid_input")


class DraftingAdapter(TaskAdapter):
    task_code = "LLM2_DRAFT"
    model_classes = ("PRO_M", "PRO_L", "ADVANCED")
    policy_keys = ("max_tokens_in", "max_tokens_out", "agent_max_steps")
    steps_key = "agent_max_steps"

    def parse(self, payload: Any) -> DraftInput:
        if not isinstance(payload, dict):
            raise BadRequest("The body must be a JSON object.", code="invalid_input")
        disclosure = payload.get("disclosure")
        if not isinstance(disclosure, str) or not disclosure.strip():
            raise BadRequest("'disclosure' is required: the invention disclosure as text.", code="invalid_input")
        prior_art = payload.get("prior_art") or []
        if not isinstance(prior_art, list) or len(prior_art) > MAX_PRIOR_ART:
            raise BadRequest(f"'prior_art' must be a list of at most {MAX_PRIOR_ART} items.", code="invalid_input")
        style = payload.get("claim_style", "apparatus")
        if style not in CLAIM_STYLES:
            raise BadRequest(f"'claim_style' must be one of {', '.join(CLAIM_STYLES)}.", code="invalid_input")
        jurisdiction = payload.get("jurisdiction", "US")
        if jurisdiction not in JURISDICTIONS:
            raise BadRequest("'jurisdiction' must be 'US' or 'EP'.", code="invalid_input")
        wanted = payload.get("sections")
        if wanted is None:
            sections = list(SECTIONS)
        else:
            if not isinstance(wanted, list) or not wanted or not all(isinstance(s, str) for s in wanted):
                raise BadRequest("'sections' must be a non-empty list of section names.", code="invalid_input")
            unknown = sorted(set(wanted) - set(SECTIONS))
            if unknown:
                raise BadRequest(f"Unknown sections: {', '.join(unknown)}. Known: {', '.join(SECTIONS)}.",
                                 code="invalid_input")
            sections = [s for s in SECTIONS if s in wanted]  # document order, no repeats
        return DraftInput(disclosure=disclosure.strip(), prior_art=[_prior_art_item(i) for i in prior_art],
                          claim_style=style, jurisdiction=jurisdiction, sections=sections)

    def input_text(self, parsed: DraftInput) -> str:
        text = "Invention disclosure:\n" + parsed.disclosure
        if parsed.prior_art:
            text += "\n\nPrior art to distinguish:\n" + "\n".join(f"- {p}" for p in parsed.prior_art)
        return text

    def _system(self, parsed: DraftInput, template: str, **lines: str) -> str:
        ref = "e.g. 'according to claim 1'" if parsed.jurisdiction == "EP" else "e.g. 'The apparatus of claim 1'"
        extra = "".join(f"{k.replace('_', ' ').capitalize()}: {v}\n" for k, v in lines.items())
        style = "EPC Rules 42/43 (two-part form where appropriate)" if parsed.jurisdiction == "EP" else "USPTO"
        return (f"You are a patent attorney drafting a {parsed.jurisdiction} patent application.\n"
                f"Jurisdiction: {parsed.jurisdiction}\nClaim style: {parsed.claim_style}\n{extra}"
                f"Style: {style}; claim reference {ref}.\n"
                "Answer with the requested text only, no commentary.\n"
                f"offline-template: {template}")

    def _user(self, parsed: DraftInput, done: dict[str, str], instruction: str) -> str:
        text = self.input_text(parsed)
        if done:
            shown = "\n\n".join(f"### {HEADINGS[name]}\n{body[:_CONTEXT_CHARS]}" for name, body in done.items())
            text += "\n\nSections drafted so far:\n" + shown
        return text + "\n\nInstruction:\n" + instruction

    async def _section(self, run: AdapterRun, parsed: DraftInput, name: str, done: dict[str, str]) -> str:
        template = {"claims": "patent-claims", "abstract": "patent-abstract"}.get(name, "patent-section")
        ref = "'according to claim N'" if parsed.jurisdiction == "EP" else "'of claim N'"
        instruction = _GUIDANCE[name].format(style=parsed.claim_style, ref=ref)
        messages = [{"role": "system", "content": self._system(parsed, template, section=name)},
                    {"role": "user", "content": self._user(parsed, done, instruction)}]
        text = await run.llm(messages, step=f"section:{name}")
        return _clean(text, name)

    async def _repair(self, run: AdapterRun, parsed: DraftInput, done: dict[str, str],
                      failures: dict[str, list[str]]) -> dict[str, str]:
        parts = []
        if any(k in failures for k in ("claims_numbered", "dependencies_valid", "has_independent_claim")):
            parts.append("claims")
        if "abstract_length" in failures:
            parts.append("abstract")
        problems = "\n".join(f"- {e}" for errors in failures.values() for e in errors)
        instruction = ("The draft failed these checks:\n" + problems + "\n\nRewrite only the failing parts ("
                       + ", ".join(parts) + "), each under its own heading ('## Claims', '## Abstract'). Claims are "
                       "numbered 1, 2, 3, ... without gaps, dependent claims refer only to earlier claims, at least "
                       "one claim is independent; the abstract has at most 150 words.")
        current = "\n\n".join(f"## {HEADINGS[p]}\n\n{done.get(p, '')}" for p in parts)
        messages = [{"role": "system", "content": self._system(parsed, "patent-repair", repair=", ".join(parts))},
                    {"role": "user", "content": self._user(parsed, {}, "Current text:\n" + current + "\n\n"
                                                           + instruction)}]
        text = await run.llm(messages, step="repair")
        return _split_repair(text, parts)

    async def run(self, run: AdapterRun, parsed: DraftInput) -> dict[str, Any]:
        done: dict[str, str] = {}
        stopped = False
        for name in parsed.sections:
            try:
                done[name] = await self._section(run, parsed, name, done)
            except BudgetExhausted as stop:
                missing = [s for s in parsed.sections if s not in done]
                run.notes.append(f"Stopped at {stop.key} = {stop.limit} after {len(done)} of "
                                 f"{len(parsed.sections)} sections; not drafted: {', '.join(missing)}.")
                stopped = True
                break

        checks = _checks(done)
        repaired = False
        failures = claim_checks.failed(checks)
        if failures and not stopped:
            try:
                fixed = await self._repair(run, parsed, done, failures)
            except BudgetExhausted as stop:
                run.notes.append(f"No repair step left ({stop.key} = {stop.limit}); failed checks: "
                                 + _describe(failures))
            else:
                repaired = True
                done.update(fixed)
                checks = _checks(done)
                failures = claim_checks.failed(checks)
                if failures:
                    run.notes.append("Checks still failing after the repair step: " + _describe(failures))
        elif failures:
            run.notes.append("Failed checks (no step left to repair them): " + _describe(failures))

        claims = claim_checks.claims_parse(done["claims"]) if "claims" in done else []
        if "claims" in done and claims:
            done["claims"] = claim_checks.claims_format(claims)
        return {
            "sections": done,
            "claims": [c.as_dict() for c in claims],
            "checks": {"passed": not failures, "repaired": repaired, "results": checks,
                       "abstract_words": claim_checks.abstract_words(done["abstract"]) if "abstract" in done else None},
            "markdown": _markdown(done, claims, parsed.jurisdiction),
            "sections_missing": [s for s in parsed.sections if s not in done],
        }


def _checks(done: dict[str, str]) -> dict[str, list[str] | None]:
    claims = claim_checks.claims_parse(done["claims"]) if "claims" in done else None
    return claim_checks.draft_check(claims=claims, abstract=done.get("abstract"))


def _describe(failures: dict[str, list[str]]) -> str:
    return "; ".join(f"{name}: {', '.join(errors)}" for name, errors in failures.items())


def _clean(text: str, name: str) -> str:
    text = text.strip()
    # Drop a heading the model may have repeated ("## Background", "Title:").
    text = re.sub(rf"^(?:#+\s*)?{re.escape(HEADINGS[name])}\s*:?\s*\n+", "", text, flags=re.IGNORECASE)
    if name == "title":
        text = text.splitlines()[0].strip().strip("#*\"' ") if text else text
        text = re.sub(r"^title\s*:\s*", "", text, flags=re.IGNORECASE)
    return text.strip()


def _split_repair(text: str, parts: list[str]) -> dict[str, str]:
    """The repaired parts from `## Claims` / `## Abstract` headings; a single part may come bare."""
    found: dict[str, str] = {}
    chunks = re.split(r"^#+\s*(Claims|Abstract)\s*$", text, flags=re.IGNORECASE | re.MULTILINE)
    for heading, body in zip(chunks[1::2], chunks[2::2], strict=False):
        name = heading.lower()
        if name in parts and body.strip():
            found[name] = body.strip()
    if not found and len(parts) == 1 and text.strip():
        found[parts[0]] = _clean(text, parts[0])
    return found


def _markdown(done: dict[str, str], claims: list[claim_checks.Claim], jurisdiction: str) -> str:
    headings = EP_HEADINGS if jurisdiction == "EP" else HEADINGS
    lines: list[str] = [f"# {done['title']}" if "title" in done else "# Patent application (draft)"]
    for name in SECTIONS:
        if name == "title" or name not in done:
            continue
        body = done[name]
        if name == "claims" and claims:
            body = "\n\n".join(f"{c.number}. {c.text}" for c in claims)
        lines.append(f"## {headings[name]}\n\n{body}")
    return "\n\n".join(lines) + "\n"


ADAPTER = DraftingAdapter()
