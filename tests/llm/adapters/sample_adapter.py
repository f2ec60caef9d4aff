"""A minimal adapter that exercises the runner: N LLM steps, then M external calls."""

from __future__ import annotations

from typing import Any

from gateway_project.errors import BadRequest
from llm.adapters.base import AdapterRun, TaskAdapter


class SampleAdapter(TaskAdapter):
    task_code = "LLM3_DIAGRAM"
    model_classes = ("BASE_M", "PRO_M")
    policy_keys = ("max_steps", "max_api_calls", "max_tokens_out")
    steps_key = "max_steps"

    def parse(self, payload: Any) -> dict:
        if not isinstance(payload, dict) or not isinstance(payload.get("text"), str):
            raise BadRequest("'text' is required.", code="invalid_input")
        return payload

    def input_text(self, parsed: dict) -> str:
        return parsed["text"]

    async def run(self, run: AdapterRun, parsed: dict) -> dict:
        outputs = []
        for i in range(parsed.get("steps", 1)):
            outputs.append(await run.llm([{"role": "user", "content": f"{parsed['text']} #{i}"}], step=f"s{i}"))
        for _ in range(parsed.get("searches", 0)):
            await run.external("search", _noop)
        return {"outputs": outputs}


async def _noop() -> None:
    return None


ADAPTER = SampleAdapter()
