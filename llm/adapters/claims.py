"""Claim-set parsing and the formal checks a patent draft must pass before it is returned.

The checks are deliberately formal (they do not judge patentability): claims numbered from 1
without gaps or repeats, every dependent claim referring only to earlier claims, at least one
independent claim, and an abstract of at most 150 words.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field
from typing import Any

ABSTRACT_MAX_WORDS = 150

# "1. An apparatus ...", "1) A method ...", "Claim 1. ..." at the start of a line.
_CLAIM_START = re.compile(r"^\s*(?:claim\s+)?(\d{1,3})\s*[.):]\s+(.*\S)?\s*$", re.IGNORECASE)
# "of claim 3", "according to claims 1 or 2", "as claimed in any one of claims 1 to 4".
_REFERENCE = re.compile(r"\bclaims?\s+(\d{1,3}(?:\s*(?:,|or|and|to|-|–)\s*(?:any\s+one\s+of\s+)?\d{1,3})*)",
                        re.IGNORECASE)
_RANGE = re.compile(r"(\d{1,3})\s*(?:to|-|–)\s*(\d{1,3})")


@dataclass
class Claim:
    number: int
    text: str
    depends_on: list[int] = field(default_factory=list)

    @property
    def independent(self) -> bool:
        return not self.depends_on

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _references(text: str) -> list[int]:
    found: list[int] = []
    for match in _REFERENCE.finditer(text):
        group = match.group(1)
        for low, high in _RANGE.findall(group):
            lo, hi = int(low), int(high)
            if 0 < hi - lo < 100:
                found.extend(range(lo, hi + 1))
        found.extend(int(n) for n in re.findall(r"\d{1,3}", _RANGE.sub(" ", group)))
    return sorted(set(found))


def claims_parse(text: str) -> list[Claim]:
    """Numbered claims from free text; lines before the first number (e.g. "What is claimed is:")
    are ignored and continuation lines join the claim above them."""
    claims: list[Claim] = []
    for raw_line in text.splitlines():
        line = raw_line.strip().lstrip("*").strip()
        match = _CLAIM_START.match(line)
        if match:
            claims.append(Claim(number=int(match.group(1)), text=(match.group(2) or "").strip()))
        elif claims and line:
            claims[-1].text = f"{claims[-1].text} {line}".strip()
    for claim in claims:
        claim.depends_on = _references(claim.text)
    return claims


def claims_check(claims: list[Claim]) -> dict[str, list[str]]:
    """Errors per check (an empty list = the check passed)."""
    numbering: list[str] = []
    dependencies: list[str] = []
    independent: list[str] = []
    if not claims:
        numbering.append("no numbered claims found")
    else:
        numbers = [c.number for c in claims]
        if numbers[0] != 1:
            numbering.append(f"claims must start at 1, not {numbers[0]}")
        for previous, current in zip(numbers, numbers[1:], strict=False):
            if current == previous:
                numbering.append(f"claim {current} is numbered twice")
            elif current != previous + 1:
                numbering.append(f"claim {previous} is followed by claim {current}")
    known = {c.number for c in claims}
    for claim in claims:
        for ref in claim.depends_on:
            if ref >= claim.number:
                dependencies.append(f"claim {claim.number} refers to claim {ref}, which is not an earlier claim")
            elif ref not in known:
                dependencies.append(f"claim {claim.number} refers to claim {ref}, which does not exist")
    if claims and not any(c.independent for c in claims):
        independent.append("there is no independent claim")
    elif not claims:
        independent.append("there is no independent claim")
    return {"claims_numbered": numbering, "dependencies_valid": dependencies, "has_independent_claim": independent}


def abstract_words(text: str) -> int:
    return len(re.findall(r"\S+", text))


def abstract_check(text: str, limit: int = ABSTRACT_MAX_WORDS) -> list[str]:
    words = abstract_words(text)
    if not text.strip():
        return ["the abstract is empty"]
    return [f"the abstract has {words} words; at most {limit} are allowed"] if words > limit else []


def draft_check(*, claims: list[Claim] | None, abstract: str | None) -> dict[str, list[str] | None]:
    """All checks for a draft; a check whose part was not drafted is None (not applicable)."""
    result: dict[str, list[str] | None] = {
        "claims_numbered": None, "dependencies_valid": None, "has_independent_claim": None, "abstract_length": None,
    }
    if claims is not None:
        result.update(claims_check(claims))
    if abstract is not None:
        result["abstract_length"] = abstract_check(abstract)
    return result


def failed(checks: dict[str, list[str] | None]) -> dict[str, list[str]]:
    return {name: errors for name, errors in checks.items() if errors}


def claims_format(claims: list[Claim]) -> str:
    return "\n\n".join(f"{c.number}. {c.text}" for c in claims)
