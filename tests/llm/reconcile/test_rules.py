"""The rules the comparison rests on: model names as the providers report them, OpenAI's cost line
items, and when a difference is drift."""

from __future__ import annotations

from llm.reconcile.clients import model_canonical, openai_line_item_model
from llm.reconcile.services import Thresholds


def test_the_catalog_name_of_a_reported_model():
    known = {"gpt-4o-mini", "gpt-4o", "claude-haiku-4-5"}
    assert model_canonical("gpt-4o-mini-2024-07-18", known) == "gpt-4o-mini"
    assert model_canonical("gpt-4o-2024-08-06", known) == "gpt-4o"
    assert model_canonical("claude-haiku-4-5-20251001", known) == "claude-haiku-4-5"
    assert model_canonical("gpt-4o", known) == "gpt-4o"
    assert model_canonical("o3-2025-04-16", known) == "o3-2025-04-16"  # not in the catalog: the provider's name


def test_openai_cost_line_items_name_their_model():
    assert openai_line_item_model("gpt-4o-mini-2024-07-18, cached input") == "gpt-4o-mini-2024-07-18"
    assert openai_line_item_model("gpt-4o-2024-08-06, output") == "gpt-4o-2024-08-06"
    assert openai_line_item_model("web search tool calls") == "web search tool calls"


def test_a_figure_drifts_only_over_both_tolerances():
    t = Thresholds(percent=1.0, requests=0, tokens=100, micro_usd=10_000)
    assert not t.drifts("tokens_in", ledger=1_000_000, provider=1_005_000, ledger_requests=10)  # 0.5 %
    assert t.drifts("tokens_in", ledger=1_000_000, provider=1_020_000, ledger_requests=10)  # 2 %
    assert not t.drifts("tokens_in", ledger=50, provider=120, ledger_requests=1)  # 70 tokens
    assert t.drifts("requests", ledger=3, provider=4, ledger_requests=3)
    # The ledger rounds each call up to the micro-dollar: 5 calls may be 5 micro-USD over, never flagged.
    assert not Thresholds(percent=0, requests=0, tokens=0, micro_usd=0).drifts(
        "cost_micro_usd", ledger=1_005, provider=1_000, ledger_requests=5)
    assert Thresholds(percent=0, requests=0, tokens=0, micro_usd=0).drifts(
        "cost_micro_usd", ledger=1_006, provider=1_000, ledger_requests=5)
