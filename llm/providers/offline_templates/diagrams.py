"""Offline answers for the diagram adapter: valid Mermaid or PlantUML of the requested kind.

Deterministic from the request. The adapter's system message names the template and carries
`Format:`, `Kind:` and `File:` lines; the user message starts with `Description:`. A description
containing "[offline:broken]" yields an invalid diagram from `diagram-generate`; `diagram-repair`
always answers with a valid one.
"""

from __future__ import annotations

import re
from typing import Any

from llm.providers.offline_templates import register

_TRAILING = {"of", "to", "for", "in", "on", "by", "with", "is", "are", "at", "from", "as", "it"}
_SKIP = {"a", "an", "the", "then", "and", "which", "that", "it", "its", "this", "when", "where", "so"}


def _text(messages: list[dict[str, Any]], roles: tuple[str, ...]) -> str:
    return "\n".join(m["content"] for m in messages if m.get("role") in roles and isinstance(m.get("content"), str))


def _field(system: str, name: str, default: str) -> str:
    match = re.search(rf"^{name}:\s*(.+)$", system, re.MULTILINE)
    return match.group(1).strip() if match else default


def _description(messages: list[dict[str, Any]]) -> str:
    user = _text(messages, ("user",))
    match = re.search(r"Description:\n(.*?)(?:\n\n[A-Z][A-Za-z ]+:\n|\Z)", user, re.DOTALL)
    text = match.group(1) if match else user
    return re.sub(r"\[offline:[a-z\-]+\]", "", text).strip()


def _label(phrase: str, words: int = 5) -> str:
    tokens = re.findall(r"[A-Za-z0-9]+", phrase)
    while tokens and tokens[0].lower() in _SKIP:
        tokens = tokens[1:]
    tokens = tokens[:words]
    while len(tokens) > 1 and tokens[-1].lower() in _SKIP | _TRAILING:
        tokens = tokens[:-1]
    return " ".join(tokens)


def steps_of(description: str) -> list[str]:
    """Up to five short step labels: the description's clauses, in order."""
    clauses = re.split(r"[.;,:!?]\s*|\s+then\s+|\s+and then\s+", description)
    labels = []
    for clause in clauses:
        label = _label(clause)
        if label and label.lower() not in (x.lower() for x in labels):
            labels.append(label[0].upper() + label[1:])
    defaults = ["Receive input", "Process input", "Check result", "Store result", "Report result"]
    for default in defaults:
        if len(labels) >= 3:
            break
        labels.append(default)
    return labels[:5]


def parts_of(description: str) -> list[str]:
    """Up to four component names: capitalised distinct longer words of the description."""
    found: list[str] = []
    for word in re.findall(r"[A-Za-z][A-Za-z\-]{3,}", description):
        name = word.lower()
        verbish = name.endswith(("ly", "ed", "ing", "es"))
        if name not in _SKIP and name not in (f.lower() for f in found) and not verbish:
            found.append(word.capitalize())
    for default in ("Client", "Controller", "Processor", "Storage"):
        if len(found) >= 3:
            break
        if default not in found:
            found.append(default)
    return found[:4]


def mermaid(kind: str, description: str, variant: int) -> str:
    steps, parts = steps_of(description), parts_of(description)
    direction = "TD" if variant % 2 else "LR"
    if kind == "flowchart":
        lines = [f"flowchart {direction}", "    S([Start])"]
        previous = "S"
        for i, step in enumerate(steps[:-1], start=1):
            lines.append(f"    {previous} --> N{i}[{step}]")
            previous = f"N{i}"
        lines += [f"    {previous} --> D{{Done?}}", f"    D -->|yes| N{len(steps)}[{steps[-1]}]",
                  "    D -->|no| N1", f"    N{len(steps)} --> E([End])"]
    elif kind == "block":
        lines = [f"flowchart {direction}", f"    subgraph SYS[{_label(description, 4) or 'System'}]"]
        lines += [f"        B{i}[{part}]" for i, part in enumerate(parts, start=1)]
        lines.append("    end")
        lines += [f"    B{i} --> B{i + 1}" for i in range(1, len(parts))]
    elif kind == "sequence":
        actors = ["User", *parts[:3]]
        lines = ["sequenceDiagram"] + [f"    participant P{i} as {a}" for i, a in enumerate(actors)]
        for i, step in enumerate(steps):
            src, dst = i % len(actors), (i + 1) % len(actors)
            lines.append(f"    P{src}->>P{dst}: {step}")
        lines.append(f"    P{len(steps) % len(actors)}-->>P0: Result")
    else:  # state
        lines = ["stateDiagram-v2"] + [f'    state "{step}" as S{i}' for i, step in enumerate(steps, start=1)]
        lines.append("    [*] --> S1")
        lines += [f"    S{i} --> S{i + 1} : next" for i in range(1, len(steps))]
        lines += [f"    S{len(steps)} --> S1 : repeat", f"    S{len(steps)} --> [*]"]
    return "\n".join(lines) + "\n"


def plantuml(kind: str, description: str, variant: int) -> str:
    steps, parts = steps_of(description), parts_of(description)
    lines = ["@startuml", f"title {_label(description, 6) or 'Diagram'}"]
    if kind == "flowchart":
        lines.append("start")
        lines += [f":{step};" for step in steps[:-1]]
        lines += ["if (Done?) then (yes)", f"  :{steps[-1]};", "else (no)", f"  :{steps[0]};", "endif", "stop"]
    elif kind == "block":
        lines.append(f'package "{_label(description, 4) or "System"}" {{')
        lines += [f'  component "{part}" as B{i}' for i, part in enumerate(parts, start=1)]
        lines.append("}")
        lines += [f"B{i} --> B{i + 1}" for i in range(1, len(parts))]
    elif kind == "sequence":
        actors = parts[:3]
        lines.append("actor User as P0")
        lines += [f'participant "{a}" as P{i}' for i, a in enumerate(actors, start=1)]
        everyone = ["P0"] + [f"P{i}" for i in range(1, len(actors) + 1)]
        for i, step in enumerate(steps):
            lines.append(f"{everyone[i % len(everyone)]} -> {everyone[(i + 1) % len(everyone)]} : {step}")
        lines.append(f"{everyone[len(steps) % len(everyone)]} --> P0 : Result")
    else:  # state
        lines += [f'state "{step}" as S{i}' for i, step in enumerate(steps, start=1)]
        lines.append("[*] --> S1")
        lines += [f"S{i} --> S{i + 1} : next" for i in range(1, len(steps))]
        lines.append(f"S{len(steps)} --> [*]")
    if variant % 2 == 0 and kind != "sequence":
        lines.insert(2, "left to right direction" if kind in ("block", "state") else "skinparam shadowing false")
    lines.append("@enduml")
    return "\n".join(lines) + "\n"


def broken(fmt: str, kind: str) -> str:
    if fmt == "plantuml":
        return "@startuml\nstart\n:Receive input\nif (Done?) then (yes)\n:Stop;\n"  # no ';', no endif/@enduml
    header = {"flowchart": "flowchart TD", "block": "flowchart LR", "sequence": "sequenceDiagram",
              "state": "stateDiagram-v2"}[kind]
    return f"{header}\n    A[Receive input --> B{{Check\n"


def _answer(messages: list[dict[str, Any]], allow_broken: bool) -> str:
    system = _text(messages, ("system", "developer"))
    fmt = _field(system, "Format", "mermaid")
    kind = _field(system, "Kind", "flowchart")
    variant = int(_field(system, "File", "1").split()[0]) if _field(system, "File", "1")[0].isdigit() else 1
    if allow_broken and "[offline:broken]" in _text(messages, ("user",)):
        body = broken(fmt, kind)
    else:
        description = _description(messages)
        body = plantuml(kind, description, variant) if fmt == "plantuml" else mermaid(kind, description, variant)
    return f"```{fmt}\n{body}```\n"


@register("diagram-generate")
def generate(messages: list[dict[str, Any]]) -> str:
    return _answer(messages, allow_broken=True)


@register("diagram-repair")
def repair(messages: list[dict[str, Any]]) -> str:
    return _answer(messages, allow_broken=False)
