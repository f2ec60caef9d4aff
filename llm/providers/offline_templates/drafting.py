"""Offline answers for the patent-drafting adapter: plausible sections, numbered claims, an abstract.

Deterministic from the request. The drafting adapter's system message names the template and
carries `Section:`, `Jurisdiction:` and `Claim style:` lines; the user message starts with
`Invention disclosure:`. A disclosure containing "[offline:broken]" yields a claim set that fails
the checks (a numbering gap and a forward reference), "[offline:long-abstract]" an abstract of
more than 150 words; the repair template answers with corrected parts.
"""

from __future__ import annotations

import re
from typing import Any

from llm.providers.offline_templates import register

_STOP = {"a", "an", "the", "this", "that", "which", "and", "or", "of", "for", "to", "in", "on", "with", "by", "is",
         "are", "be", "it", "its", "as", "at", "from", "into", "using", "uses", "use", "has", "have", "can", "will",
         "when", "while", "where", "so", "too", "very", "than", "then", "fast", "slow", "never", "always", "such"}


def _system(messages: list[dict[str, Any]]) -> str:
    return "\n".join(m.get("content", "") for m in messages
                     if m.get("role") in ("system", "developer") and isinstance(m.get("content"), str))


def _user(messages: list[dict[str, Any]]) -> str:
    return "\n".join(m.get("content", "") for m in messages
                     if m.get("role") == "user" and isinstance(m.get("content"), str))


def _field(system: str, name: str, default: str) -> str:
    match = re.search(rf"^{name}:\s*(.+)$", system, re.MULTILINE)
    return match.group(1).strip() if match else default


def disclosure_of(messages: list[dict[str, Any]]) -> str:
    user = _user(messages)
    match = re.search(r"Invention disclosure:\n(.*?)(?:\n\n[A-Z][A-Za-z ]+:\n|\Z)", user, re.DOTALL)
    text = match.group(1) if match else user
    return re.sub(r"\[offline:[a-z\-]+\]", "", text).strip()


def prior_art_of(messages: list[dict[str, Any]]) -> list[str]:
    user = _user(messages)
    match = re.search(r"Prior art to distinguish:\n(.*?)(?:\n\n[A-Z][A-Za-z ]+:\n|\Z)", user, re.DOTALL)
    if not match:
        return []
    return [line[2:].strip() for line in match.group(1).splitlines() if line.startswith("- ")]


def subject_of(disclosure: str) -> str:
    """A short noun phrase for the invention: the first sentence, lower-cased, without a leading article."""
    first = re.split(r"(?<=[.!?])\s", disclosure.strip(), maxsplit=1)[0]
    words = re.findall(r"[A-Za-z0-9][A-Za-z0-9\-]*", first)
    while words and words[0].lower() in ("a", "an", "the", "our", "this", "we", "invention", "disclosure", "is"):
        words = words[1:]
    return " ".join(w.lower() for w in words[:9]) or "device"


def _verbish(word: str) -> bool:
    return word.endswith(("s", "ly")) and not word.endswith(("ss", "us", "is"))


def keywords_of(disclosure: str, n: int = 6) -> list[str]:
    """Nouns of the disclosure: the head of each noun phrase after an article ("a door hinge" ->
    "hinge"), then other longer words; common part names fill up the list."""
    text = disclosure.lower()
    seen: list[str] = []
    for first, second in re.findall(r"\b(?:a|an|the)\s+([a-z][a-z\-]+)(?:\s+([a-z][a-z\-]+))?", text):
        head = second if second and second not in _STOP and not _verbish(second) else first
        if head not in _STOP and len(head) > 2 and head not in seen:
            seen.append(head)
    for word in re.findall(r"[a-z][a-z\-]{3,}", text):
        if word not in _STOP and not _verbish(word) and word not in seen:
            seen.append(word)
    defaults = ["housing", "controller", "sensor", "actuator", "interface", "memory"]
    return (seen + [d for d in defaults if d not in seen])[:n]


def _title(subject: str) -> str:
    small = {"of", "for", "and", "or", "the", "a", "an", "to", "in", "on", "with", "via", "by"}
    words = subject.split()[:8]
    cased = [w if (i and w in small) else w.capitalize() for i, w in enumerate(words)]
    return "System and Method for " + " ".join(cased) if cased else "Improved Device"


def _sections(messages: list[dict[str, Any]]) -> dict[str, str]:
    system = _system(messages)
    disclosure = disclosure_of(messages)
    subject = subject_of(disclosure)
    k = keywords_of(disclosure)
    jurisdiction = _field(system, "Jurisdiction", "US")
    prior = prior_art_of(messages)
    distinguish = (
        " Known approaches include " + "; ".join(prior[:3]) + ". None of them provides the "
        f"{k[0]} and {k[1]} arrangement described herein, and each leaves the {k[2]} uncontrolled."
        if prior else
        f" Known approaches handle the {k[0]} and the {k[1]} separately, which leaves the {k[2]} uncontrolled."
    )
    paragraphs = [
        f"In one embodiment, the {subject} comprises a {k[0]} coupled to a {k[1]}. The {k[1]} is arranged to act "
        f"on the {k[2]} in response to a signal derived from the {k[3]}.",
        f"The {k[3]} may be monitored continuously or at intervals. When a monitored value crosses a threshold, "
        f"the {k[1]} adjusts the {k[2]} so that the {k[0]} remains within its intended operating range.",
        f"In a further embodiment, a {k[4]} stores parameters that define the threshold, and the {k[5]} allows "
        f"the parameters to be updated without altering the {k[0]}.",
        "The embodiments described are examples only; features of one embodiment may be combined with features "
        "of another, and the scope of protection is defined by the claims.",
    ]
    if jurisdiction == "US":
        description = "\n\n".join(f"[{i:04d}] {p}" for i, p in enumerate(paragraphs, start=1))
    else:
        description = "\n\n".join(paragraphs)
    return {
        "title": _title(subject),
        "technical_field": f"The present disclosure relates to the {subject}, and in particular to the control of "
                           f"a {k[2]} by means of a {k[0]} and a {k[1]}.",
        "background": f"Devices of this kind are widely used, but their {k[2]} is difficult to control reliably."
                      + distinguish,
        "summary": f"According to a first aspect, there is provided a {subject} comprising a {k[0]} and a {k[1]} "
                   f"configured to act on a {k[2]} based on the {k[3]}. The arrangement keeps the {k[2]} within "
                   f"its intended range without user intervention. According to a second aspect, there is "
                   f"provided a corresponding method.",
        "brief_description_of_drawings": "FIG. 1 is a block diagram of the " + subject + ".\n\n"
                                         f"FIG. 2 is a flowchart of a method of operating the {k[0]}.",
        "detailed_description": description,
    }


def _claims(messages: list[dict[str, Any]], broken: bool) -> str:
    system = _system(messages)
    disclosure = disclosure_of(messages)
    subject = subject_of(disclosure)
    k = keywords_of(disclosure)
    style = _field(system, "Claim style", "apparatus").lower()
    ep = _field(system, "Jurisdiction", "US") == "EP"
    noun = {"method": "method", "system": "system"}.get(style, "apparatus")

    def ref(n: int, what: str) -> str:
        return f"The {what} according to claim {n}" if ep else f"The {what} of claim {n}"

    if noun == "method":
        first = (f"A method of operating a {subject}, the method comprising: monitoring a {k[3]}; determining "
                 f"that the {k[3]} crosses a threshold; and in response, causing a {k[1]} to adjust a {k[2]} "
                 f"of a {k[0]}.")
        second_kind, second = "system", (f"A system for {subject}, comprising a {k[0]}, a {k[1]} and a "
                                         f"{k[4]} storing instructions that cause the {k[1]} to perform the method "
                                         f"of claim 1.")
    else:
        first = (f"An {noun} for {subject}, comprising: a {k[0]}; a {k[1]} coupled to the {k[0]}; and a "
                 f"{k[3]} monitor, wherein the {k[1]} is configured to adjust a {k[2]} of the {k[0]} when a "
                 f"value of the {k[3]} crosses a threshold.")
        if noun == "system":
            first = first.replace("An system", "A system")
        second_kind, second = "method", (f"A method of operating the {noun} of claim 1, comprising: monitoring "
                                         f"the {k[3]}; and adjusting the {k[2]} when the threshold is crossed.")
    claims = [
        first,
        f"{ref(1, noun)}, wherein the threshold is stored in a {k[4]}.",
        f"{ref(2, noun)}, wherein the threshold is updated through a {k[5]}.",
        f"{ref(1, noun)}, wherein the {k[3]} is monitored continuously.",
        second,
        f"{ref(5, second_kind)}, wherein the {k[2]} is adjusted gradually.",
    ]
    if broken:
        # Number 3 is missing and claim 2 refers forward to claim 5.
        numbered = [(1, claims[0]), (2, f"{ref(5, noun)}, wherein the threshold is stored in a {k[4]}."),
                    (4, claims[3]), (5, claims[4]), (6, claims[5])]
    else:
        numbered = list(enumerate(claims, start=1))
    heading = "What is claimed is:" if not ep else "Claims"
    return heading + "\n\n" + "\n\n".join(f"{n}. {text}" for n, text in numbered)


def _abstract(messages: list[dict[str, Any]], long: bool) -> str:
    disclosure = disclosure_of(messages)
    subject = subject_of(disclosure)
    k = keywords_of(disclosure)
    text = (f"A {subject} includes a {k[0]} and a {k[1]} that adjusts a {k[2]} of the {k[0]} when a monitored "
            f"{k[3]} crosses a threshold. The threshold may be stored in a {k[4]} and updated through a {k[5]}. "
            f"A corresponding method is also disclosed.")
    if long:
        filler = (f" The {k[0]} and the {k[1]} cooperate in many further ways that are described at length "
                  f"for completeness and repeated here without need.")
        text += filler * 12
    return text


@register("patent-section")
def section(messages: list[dict[str, Any]]) -> str:
    name = _field(_system(messages), "Section", "summary")
    return _sections(messages).get(name, _sections(messages)["summary"])


@register("patent-claims")
def claims(messages: list[dict[str, Any]]) -> str:
    return _claims(messages, broken="[offline:broken]" in _user(messages))


@register("patent-abstract")
def abstract(messages: list[dict[str, Any]]) -> str:
    return _abstract(messages, long="[offline:long-abstract]" in _user(messages))


@register("patent-repair")
def repair(messages: list[dict[str, Any]]) -> str:
    """Corrected parts under `## Claims` / `## Abstract` headings, as the repair prompt asks."""
    system = _system(messages)
    parts = [p.strip() for p in _field(system, "Repair", "claims").split(",")]
    out = []
    if "claims" in parts:
        out.append("## Claims\n\n" + _claims(messages, broken=False).split("\n\n", 1)[1])
    if "abstract" in parts:
        out.append("## Abstract\n\n" + _abstract(messages, long=False))
    return "\n\n".join(out)
