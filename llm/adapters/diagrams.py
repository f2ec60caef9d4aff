"""Diagram generation (LLM3_DIAGRAM): Mermaid or PlantUML files of the requested kinds, validated,
repaired within `max_steps`, and exported to SVG where a renderer is installed.

`diagram_files_per_req` bounds the files per request (a request above it is refused before any
step runs), `max_steps` the generation + repair steps, `max_tokens_out` each step. Every file is
generated first; the steps left over then repair invalid files, one repair step per file.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from gateway_project.errors import BadRequest, PayloadTooLarge
from llm import diagram_render
from llm.adapters.base import AdapterRun, BudgetExhausted, TaskAdapter, gather_limited

MAX_FILES = 50  # a sanity bound on the input; the policy's diagram_files_per_req is the real limit
RENDER_CONCURRENCY = 2

_KIND_GUIDANCE = {
    ("mermaid", "flowchart"): "a Mermaid flowchart ('flowchart TD' or 'flowchart LR') of the method's steps",
    ("mermaid", "sequence"): "a Mermaid sequence diagram ('sequenceDiagram') of the messages between the parts",
    ("mermaid", "block"): "a Mermaid block diagram of the system's components, as 'flowchart LR' with a subgraph",
    ("mermaid", "state"): "a Mermaid state diagram ('stateDiagram-v2') of the system's states and transitions",
    ("plantuml", "flowchart"): "a PlantUML activity diagram (start, :action;, if/endif, stop) of the method",
    ("plantuml", "sequence"): "a PlantUML sequence diagram (participants and 'A -> B : message' lines)",
    ("plantuml", "block"): "a PlantUML component diagram (package, component, arrows) of the system",
    ("plantuml", "state"): "a PlantUML state diagram ([*], states, transitions)",
}


@dataclass
class DiagramInput:
    description: str
    kinds: list[str] = field(default_factory=lambda: ["flowchart"])
    format: str = "mermaid"
    files: int = 1


@dataclass
class _File:
    index: int
    kind: str
    format: str
    source: str = ""
    check: diagram_render.DiagramCheck | None = None
    repaired: bool = False

    @property
    def name(self) -> str:
        return f"diagram-{self.index}-{self.kind}.{diagram_render.EXTENSIONS[self.format]}"

    def as_dict(self) -> dict[str, Any]:
        check = self.check or diagram_render.DiagramCheck(valid=False, errors=["not validated"])
        return {"name": self.name, "format": self.format, "kind": self.kind, "source": self.source,
                "valid": check.valid, "errors": check.errors, "repaired": self.repaired,
                "svg": check.svg, "svg_reason": None if check.svg else check.svg_reason}


class DiagramAdapter(TaskAdapter):
    task_code = "LLM3_DIAGRAM"
    model_classes = ("BASE_M", "PRO_M")
    policy_keys = ("diagram_files_per_req", "max_steps", "max_tokens_out")
    steps_key = "max_steps"

    def parse(self, payload: Any) -> DiagramInput:
        if not isinstance(payload, dict):
            raise BadRequest("The body must be a JSON object.", code="invalid_input")
        description = payload.get("description")
        if not isinstance(description, str) or not description.strip():
            raise BadRequest("'description' is required: the system or method to draw.", code="invalid_input")
        kinds = payload.get("kinds", ["flowchart"])
        if isinstance(kinds, str):
            kinds = [kinds]
        if not isinstance(kinds, list) or not kinds or not all(k in diagram_render.KINDS for k in kinds):
            raise BadRequest(f"'kinds' must be a non-empty list of {', '.join(diagram_render.KINDS)}.",
                             code="invalid_input")
        kinds = list(dict.fromkeys(kinds))
        fmt = payload.get("format", "mermaid")
        if fmt not in diagram_render.FORMATS:
            raise BadRequest("'format' must be 'mermaid' or 'plantuml'.", code="invalid_input")
        files = payload.get("files", len(kinds))
        if isinstance(files, bool) or not isinstance(files, int) or not 1 <= files <= MAX_FILES:
            raise BadRequest(f"'files' must be an integer from 1 to {MAX_FILES}.", code="invalid_input")
        if files < len(kinds):
            raise BadRequest(f"{len(kinds)} kinds need at least {len(kinds)} files; 'files' is {files}.",
                             code="invalid_input")
        return DiagramInput(description=description.strip(), kinds=kinds, format=fmt, files=files)

    def input_text(self, parsed: DiagramInput) -> str:
        return (f"Description:\n{parsed.description}\n\nDiagrams:\n{parsed.files} file(s), "
                f"{parsed.format}, kinds: {', '.join(parsed.kinds)}")

    def check_limits(self, parsed: DiagramInput, limits: dict[str, int]) -> None:
        limit = limits.get("diagram_files_per_req")
        if limit is not None and parsed.files > limit:
            raise PayloadTooLarge(f"{parsed.files} diagram files requested; your plan allows at most {limit} per "
                                  "request (diagram_files_per_req).", code="too_many_files",
                                  details={"files": parsed.files, "diagram_files_per_req": limit})

    def _messages(self, parsed: DiagramInput, file: _File, template: str, extra: str = "") -> list[dict[str, Any]]:
        what = _KIND_GUIDANCE[(file.format, file.kind)]
        system = (f"You draw technical diagrams for patent applications.\nFormat: {file.format}\nKind: {file.kind}\n"
                  f"File: {file.index} of {parsed.files}\n"
                  f"Answer with {what}, in one fenced code block, nothing else. Labels are plain words "
                  "(no quotes, brackets or parentheses inside labels).\n"
                  f"offline-template: {template}")
        user = f"Description:\n{parsed.description}"
        if parsed.files > len(parsed.kinds):
            user += (f"\n\nVariant:\nThis is file {file.index} of {parsed.files}; show a different view or level "
                     "of detail.")
        return [{"role": "system", "content": system}, {"role": "user", "content": user + extra}]

    async def _validate(self, files: list[_File]) -> None:
        async def one(file: _File) -> None:
            file.check = await diagram_render.diagram_check(file.source, file.format, file.kind)

        results = await gather_limited([lambda f=f: one(f) for f in files], limit=RENDER_CONCURRENCY)
        for file, outcome in zip(files, results, strict=True):
            if isinstance(outcome, BaseException):
                file.check = diagram_render.DiagramCheck(valid=False, errors=[f"validation failed: {outcome}"])

    async def run(self, run: AdapterRun, parsed: DiagramInput) -> dict[str, Any]:
        planned = [_File(index=i + 1, kind=parsed.kinds[i % len(parsed.kinds)], format=parsed.format)
                   for i in range(parsed.files)]
        files: list[_File] = []
        try:
            for file in planned:
                text = await run.llm(self._messages(parsed, file, "diagram-generate"), step=f"generate:{file.name}")
                file.source = diagram_render.extract_source(text, file.format)
                files.append(file)
        except BudgetExhausted as stop:
            skipped = [f.name for f in planned[len(files):]]
            run.notes.append(f"Stopped at {stop.key} = {stop.limit} after generating {len(files)} of "
                             f"{parsed.files} files; not generated: {', '.join(skipped)}.")
        await self._validate(files)

        invalid = [f for f in files if f.check is not None and not f.check.valid]
        repaired: list[_File] = []
        for position, file in enumerate(invalid):
            assert file.check is not None
            problems = "\n".join(f"- {e}" for e in file.check.errors)
            extra = (f"\n\nInvalid diagram:\n```{file.format}\n{file.source}```\n\nErrors:\n{problems}\n\n"
                     "Instruction:\nReturn the corrected diagram.")
            try:
                text = await run.llm(self._messages(parsed, file, "diagram-repair", extra), step=f"repair:{file.name}")
            except BudgetExhausted as stop:
                left = [f.name for f in invalid[position:]]
                run.notes.append(f"No step left to repair ({stop.key} = {stop.limit}); still invalid: "
                                 f"{', '.join(left)}.")
                break
            file.source = diagram_render.extract_source(text, file.format)
            file.repaired = True
            repaired.append(file)
        await self._validate(repaired)
        still = [f.name for f in repaired if f.check is not None and not f.check.valid]
        if still:
            run.notes.append(f"Still invalid after a repair step: {', '.join(still)}.")

        return {
            "format": parsed.format,
            "files": [f.as_dict() for f in files],
            "files_requested": parsed.files,
            "valid": sum(1 for f in files if f.check is not None and f.check.valid),
            "rendered": sum(1 for f in files if f.check is not None and f.check.svg),
        }


ADAPTER = DiagramAdapter()
