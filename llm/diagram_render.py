"""Diagram validation and SVG rendering for Mermaid and PlantUML.

Validation has two layers: a built-in syntax check (header for the requested kind, balanced
brackets and blocks, line shapes for sequence and state diagrams, @startuml/@enduml) that needs
nothing installed, and the real parser of the renderer where one is installed: PlantUML
(Debian's `plantuml`, `plantuml -tsvg -pipe`) and Mermaid (`mmdc` from @mermaid-js/mermaid-cli,
driving Debian's Chromium through a puppeteer config). Renderers run as subprocesses with a
timeout, off the event loop; when one is missing the file gets `svg: None` with a reason.

Settings (all optional): PLANTUML_BIN, MMDC_BIN, MERMAID_CHROMIUM (default /usr/bin/chromium),
DIAGRAM_RENDER_TIMEOUT (seconds, default 60).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import tempfile
from dataclasses import dataclass, field

from django.conf import settings

FORMATS = ("mermaid", "plantuml")
KINDS = ("flowchart", "sequence", "block", "state")
EXTENSIONS = {"mermaid": "mmd", "plantuml": "puml"}

_MERMAID_HEADERS = {
    "flowchart": re.compile(r"^(?:flowchart|graph)(?:\s+(?:TD|TB|BT|RL|LR))?\s*;?$"),
    "block": re.compile(r"^(?:(?:flowchart|graph)(?:\s+(?:TD|TB|BT|RL|LR))?|block-beta)\s*;?$"),
    "sequence": re.compile(r"^sequenceDiagram\s*$"),
    "state": re.compile(r"^stateDiagram(?:-v2)?\s*$"),
}
_MERMAID_ANY_HEADER = re.compile(r"^(flowchart|graph|sequenceDiagram|stateDiagram(?:-v2)?|classDiagram|erDiagram|"
                                 r"gantt|pie|journey|gitGraph|mindmap|timeline|block-beta)\b")
_SEQ_ARROW = r"(?:-->>|->>|-->|->|--x|-x|--\)|-\))"
_SEQ_LINE = re.compile(
    r"^(?:(?:participant|actor)\s+\S.*|autonumber.*|title\s*:?.*|(?:activate|deactivate)\s+\S+|"
    r"note\s+(?:left of|right of|over)\s+[^:]+:.*|(?:loop|alt|opt|par|critical|break|rect|box)\b.*|"
    r"(?:else|and|option)\b.*|end|[^\s:>\-]+?\s*" + _SEQ_ARROW + r"[+\-]?\s*[^\s:]+?\s*:.*)$"
)
_SEQ_BLOCK = re.compile(r"^(?:loop|alt|opt|par|critical|break|rect|box)\b")
_STATE_REF = r"(?:\[\*\]|[A-Za-z_][\w]*)"
_STATE_LINE = re.compile(
    r"^(?:" + _STATE_REF + r"\s*-->\s*" + _STATE_REF + r"(?:\s*:.*)?|"
    r"state\s+(?:\"[^\"]+\"\s+as\s+)?[A-Za-z_]\w*(?:\s*<<\w+>>)?\s*\{?|"
    r"state\s+\"[^\"]+\"\s+as\s+[A-Za-z_]\w*|[A-Za-z_]\w*\s*:.*|\}|--|direction\s+(?:TB|TD|BT|LR|RL)|"
    r"note\s+(?:left of|right of)\s+\w+\s*:.*|note\s+(?:left of|right of)\s+\w+|end note|classDef\s+.*|"
    r"class\s+.*)$"
)
_PAIRS = {")": "(", "]": "[", "}": "{"}
# PlantUML preprocessor features that read local files, the environment or the network: a
# generated diagram must not pull server data into its SVG.
_PLANTUML_UNSAFE = re.compile(r"^\s*!(?:include\w*|import)\b|%(?:getenv|get_variable_value|load_json|file_exists|"
                              r"dirpath|filename|filenameNoExtension)\b",
                              re.IGNORECASE | re.MULTILINE)


@dataclass
class DiagramCheck:
    valid: bool
    errors: list[str] = field(default_factory=list)
    svg: str | None = None
    svg_reason: str | None = None


def extract_source(text: str, fmt: str) -> str:
    """The diagram inside a fenced block if the model wrapped it in one, else the text itself."""
    fenced = re.search(r"```[a-zA-Z0-9_-]*\s*\n(.*?)```", text, re.DOTALL)
    source = fenced.group(1) if fenced else text
    if fmt == "plantuml":
        match = re.search(r"@startuml.*?(?:@enduml|\Z)", source, re.DOTALL)
        if match:
            source = match.group(0)
    return source.strip() + "\n"


def _unquoted(line: str) -> str:
    return re.sub(r'"[^"]*"', '""', line)


def _brackets(line: str, number: int) -> list[str]:
    stack: list[str] = []
    for char in _unquoted(line):
        if char in "([{":
            stack.append(char)
        elif char in _PAIRS:
            if not stack or stack[-1] != _PAIRS[char]:
                return [f"line {number}: unbalanced '{char}'"]
            stack.pop()
    return [f"line {number}: unclosed '{stack[-1]}'"] if stack else []


def _mermaid_lines(source: str) -> list[tuple[int, str]]:
    lines = source.splitlines()
    start = 0
    if lines and lines[0].strip() == "---":  # front matter
        for index in range(1, len(lines)):
            if lines[index].strip() == "---":
                start = index + 1
                break
    return [(n, line.strip()) for n, line in enumerate(lines[start:], start=start + 1)
            if line.strip() and not line.strip().startswith("%%")]


def mermaid_check(source: str, kind: str) -> list[str]:
    lines = _mermaid_lines(source)
    if not lines:
        return ["the diagram is empty"]
    (first_no, header), body = lines[0], lines[1:]
    if not _MERMAID_HEADERS[kind].match(header):
        found = _MERMAID_ANY_HEADER.match(header)
        if found:
            return [f"line {first_no}: a {kind} diagram was requested, but this is a '{found.group(1)}' diagram"]
        return [f"line {first_no}: expected a Mermaid {kind} header, got '{header[:60]}'"]
    if not body:
        return ["the diagram has a header but no content"]
    errors: list[str] = []
    if header.startswith(("flowchart", "graph")):
        depth = 0
        for number, line in body:
            if re.match(r"^subgraph\b", line):
                depth += 1
            elif line == "end":
                depth -= 1
                if depth < 0:
                    errors.append(f"line {number}: 'end' without 'subgraph'")
                    depth = 0
            errors.extend(_brackets(line, number))
        if depth > 0:
            errors.append(f"{depth} 'subgraph' block(s) not closed with 'end'")
    elif header.startswith("sequenceDiagram"):
        depth = 0
        for number, line in body:
            if not _SEQ_LINE.match(line):
                errors.append(f"line {number}: not a valid sequence diagram statement: '{line[:60]}'")
            elif _SEQ_BLOCK.match(line):
                depth += 1
            elif line == "end":
                depth -= 1
                if depth < 0:
                    errors.append(f"line {number}: 'end' without an open block")
                    depth = 0
        if depth > 0:
            errors.append(f"{depth} block(s) (loop/alt/opt/...) not closed with 'end'")
    elif header.startswith("stateDiagram"):
        depth = 0
        for number, line in body:
            if not _STATE_LINE.match(line):
                errors.append(f"line {number}: not a valid state diagram statement: '{line[:60]}'")
                continue
            depth += line.endswith("{") - (line == "}")
            if depth < 0:
                errors.append(f"line {number}: '}}' without an open composite state")
                depth = 0
        if depth > 0:
            errors.append(f"{depth} composite state(s) not closed with '}}'")
    return errors


def plantuml_check(source: str, kind: str) -> list[str]:
    lines = [(n, line.strip()) for n, line in enumerate(source.splitlines(), start=1)
             if line.strip() and not line.strip().startswith("'")]
    if not lines:
        return ["the diagram is empty"]
    errors: list[str] = []
    if not lines[0][1].startswith("@startuml"):
        errors.append(f"line {lines[0][0]}: the diagram must start with @startuml")
    if lines[-1][1] != "@enduml":
        errors.append("the diagram must end with @enduml")
    for number, line in lines:
        if _PLANTUML_UNSAFE.search(line):
            errors.append(f"line {number}: includes, imports and file/environment functions are not allowed")
    body = [(n, line) for n, line in lines if not line.startswith(("@startuml", "@enduml"))]
    if not body:
        errors.append("the diagram has no content")
        return errors
    braces = ifs = 0
    for number, line in body:
        text = _unquoted(line)
        braces += text.count("{") - text.count("}")
        if re.match(r"^if\s*\(", line):
            ifs += 1
        elif line == "endif" or line.startswith("endif "):
            ifs -= 1
        if line.startswith(":") and not re.search(r"[;|<>/\]}]$", line):
            errors.append(f"line {number}: activity ':...' is not terminated with ';'")
        if braces < 0:
            errors.append(f"line {number}: '}}' without an open '{{'")
            braces = 0
    if braces > 0:
        errors.append(f"{braces} '{{' not closed")
    if ifs != 0:
        errors.append("'if' and 'endif' do not balance")
    texts = [line for _, line in body]
    needs = {
        "sequence": (lambda t: "[*]" not in t and re.search(r"\S\s*-+>+\s*\S", t), "a message (A -> B : text)"),
        "state": (lambda t: "[*]" in t or t.startswith("state "), "a state ([*] or 'state')"),
        "flowchart": (lambda t: t in ("start", "stop", "end") or t.startswith(":"), "an activity (start, :action;)"),
        "block": (lambda t: re.match(r"^(?:component|rectangle|node|package|frame|\[)", t), "a component or block"),
    }
    test, what = needs[kind]
    if not any(test(t) for t in texts):
        errors.append(f"a PlantUML {kind} diagram needs {what}")
    return errors


def syntax_check(source: str, fmt: str, kind: str) -> list[str]:
    return mermaid_check(source, kind) if fmt == "mermaid" else plantuml_check(source, kind)


# --- renderers -------------------------------------------------------------------------------


def _timeout() -> float:
    return float(getattr(settings, "DIAGRAM_RENDER_TIMEOUT", 60))


def _plantuml_bin() -> str | None:
    return shutil.which(getattr(settings, "PLANTUML_BIN", "plantuml"))


def _mmdc_bin() -> str | None:
    return shutil.which(getattr(settings, "MMDC_BIN", "mmdc"))


def _chromium() -> str | None:
    path = getattr(settings, "MERMAID_CHROMIUM", None) or os.environ.get("PUPPETEER_EXECUTABLE_PATH") \
        or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else None


def renderer_missing(fmt: str) -> str | None:
    """Why SVG cannot be rendered for this format here, or None when the renderer is installed."""
    if fmt == "plantuml":
        return None if _plantuml_bin() else "PlantUML is not installed (Debian package 'plantuml')"
    if not _mmdc_bin():
        return "Mermaid CLI is not installed (npm package '@mermaid-js/mermaid-cli', command 'mmdc')"
    if not _chromium():
        return "Chromium for the Mermaid CLI is not installed (Debian package 'chromium')"
    return None


@dataclass
class _Proc:
    returncode: int | None
    stdout: bytes
    stderr: str
    timed_out: bool = False


async def _run(argv: list[str], stdin: bytes | None, timeout: float, cwd: str | None = None) -> _Proc:
    env = {**os.environ, "PUPPETEER_SKIP_DOWNLOAD": "1", "PLANTUML_SECURITY_PROFILE": "SANDBOX"}
    process = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.PIPE if stdin is not None else asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd, env=env,
        start_new_session=True,  # its own process group: a timeout kills Chromium too
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(stdin), timeout)
    except (TimeoutError, asyncio.CancelledError) as stop:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(process.wait(), 5)
        if isinstance(stop, asyncio.CancelledError):
            raise
        return _Proc(None, b"", "", timed_out=True)
    return _Proc(process.returncode, out, err.decode("utf-8", "replace"))


def _first_lines(text: str, n: int = 4) -> str:
    kept = [line.rstrip() for line in text.strip().splitlines() if line.strip() and not line.startswith("    at ")]
    return "\n".join(kept[:n])


async def _render_plantuml(source: str) -> DiagramCheck:
    binary = _plantuml_bin()
    assert binary is not None
    proc = await _run([binary, "-tsvg", "-pipe", "-charset", "UTF-8"], source.encode(), _timeout())
    if proc.timed_out:
        return DiagramCheck(valid=True, svg_reason=f"PlantUML timed out after {_timeout():g}s")
    if proc.returncode != 0:
        # PlantUML prints "ERROR\n<line>\n<message>" and exits 200 on a syntax error.
        match = re.search(r"ERROR\s*\n\s*(\d+)\s*\n\s*(.+)", proc.stderr)
        if match or proc.returncode == 200:
            detail = f"{match.group(2).strip()} (reported at line {match.group(1)})" if match else \
                _first_lines(proc.stderr) or "syntax error"
            return DiagramCheck(valid=False, errors=[f"plantuml: {detail}"],
                                svg_reason="not rendered: the diagram is invalid")
        return DiagramCheck(valid=True, svg_reason=f"PlantUML failed (exit {proc.returncode}): "
                                                   f"{_first_lines(proc.stderr, 2)}")
    svg = proc.stdout.decode("utf-8", "replace")
    if "<svg" not in svg:
        return DiagramCheck(valid=True, svg_reason="PlantUML produced no SVG")
    return DiagramCheck(valid=True, svg=svg)


_MERMAID_SYNTAX = re.compile(r"Parse error|Syntax error|Lexical error|No diagram type detected|UnknownDiagramError",
                             re.IGNORECASE)


async def _render_mermaid(source: str) -> DiagramCheck:
    binary, chromium = _mmdc_bin(), _chromium()
    assert binary is not None and chromium is not None
    with tempfile.TemporaryDirectory(prefix="mmdc-") as workdir:
        config = os.path.join(workdir, "puppeteer.json")
        with open(config, "w") as handle:
            json.dump({"executablePath": chromium,
                       "args": ["--no-sandbox", "--headless", "--disable-gpu", "--disable-dev-shm-usage"]}, handle)
        mermaid_config = os.path.join(workdir, "mermaid.json")
        with open(mermaid_config, "w") as handle:  # 'securityLevel' cannot be overridden by init directives
            json.dump({"securityLevel": "strict"}, handle)
        src, out = os.path.join(workdir, "in.mmd"), os.path.join(workdir, "out.svg")
        with open(src, "w") as handle:
            handle.write(source)
        argv = [binary, "-q", "-p", config, "-c", mermaid_config, "-i", src, "-o", out]
        proc = await _run(argv, None, _timeout(), cwd=workdir)
        if proc.timed_out:
            return DiagramCheck(valid=True, svg_reason=f"Mermaid CLI timed out after {_timeout():g}s")
        if proc.returncode != 0:
            if _MERMAID_SYNTAX.search(proc.stderr):
                detail = _first_lines(proc.stderr[_MERMAID_SYNTAX.search(proc.stderr).start():], 3)
                return DiagramCheck(valid=False, errors=[f"mermaid: {detail}"],
                                    svg_reason="not rendered: the diagram is invalid")
            return DiagramCheck(valid=True, svg_reason=f"Mermaid CLI failed (exit {proc.returncode}): "
                                                       f"{_first_lines(proc.stderr, 2)}")
        try:
            with open(out, encoding="utf-8", errors="replace") as handle:
                svg = handle.read()
        except FileNotFoundError:
            return DiagramCheck(valid=True, svg_reason="Mermaid CLI produced no SVG")
    if "<svg" not in svg:
        return DiagramCheck(valid=True, svg_reason="Mermaid CLI produced no SVG")
    return DiagramCheck(valid=True, svg=svg)


async def diagram_check(source: str, fmt: str, kind: str, *, render: bool = True) -> DiagramCheck:
    """Syntax check, then the real parser/renderer where installed. Never raises for a bad diagram."""
    errors = syntax_check(source, fmt, kind)
    if errors:
        return DiagramCheck(valid=False, errors=errors, svg_reason="not rendered: the diagram is invalid")
    if not render:
        return DiagramCheck(valid=True, svg_reason="rendering not requested")
    missing = renderer_missing(fmt)
    if missing:
        return DiagramCheck(valid=True, svg_reason=missing)
    try:
        return await (_render_plantuml(source) if fmt == "plantuml" else _render_mermaid(source))
    except OSError as error:  # the binary vanished or could not start: no SVG, not a failure
        return DiagramCheck(valid=True, svg_reason=f"renderer could not run: {error}")
