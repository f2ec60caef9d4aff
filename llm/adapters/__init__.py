"""Task adapters: prior-art search, patent drafting, diagram generation."""

from __future__ import annotations

import importlib

from llm.adapters.base import TaskAdapter

_MODULES = {
    "LLM1_PRIOR_ART": "llm.adapters.prior_art",
    "LLM2_DRAFT": "llm.adapters.drafting",
    "LLM3_DIAGRAM": "llm.adapters.diagrams",
}


def adapter_get(task_code: str) -> TaskAdapter | None:
    module_name = _MODULES.get(task_code)
    if module_name is None:
        return None
    return importlib.import_module(module_name).ADAPTER
