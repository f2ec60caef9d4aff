"""The formal checks a drafted claim set and abstract must pass."""

from __future__ import annotations

from llm.adapters.claims import (
    abstract_check,
    claims_check,
    claims_format,
    claims_parse,
    draft_check,
    failed,
)

GOOD = """What is claimed is:

1. An apparatus comprising a hinge and a damper.

2. The apparatus of claim 1, wherein the damper is magnetorheological.

3. The apparatus of claim 2, wherein the damper is
   controlled by a sensor.

4. A method of operating the apparatus according to any one of claims 1 to 3, comprising closing the hinge.
"""


def test_parse_numbers_text_and_dependencies():
    claims = claims_parse(GOOD)
    assert [c.number for c in claims] == [1, 2, 3, 4]
    assert [c.depends_on for c in claims] == [[], [1], [2], [1, 2, 3]]
    assert claims[2].text == "The apparatus of claim 2, wherein the damper is controlled by a sensor."
    assert claims[0].independent and not claims[1].independent


def test_a_good_claim_set_passes_every_check():
    assert failed(claims_check(claims_parse(GOOD))) == {}


def test_a_gap_in_the_numbering_fails():
    claims = claims_parse("1. A widget.\n2. The widget of claim 1, blue.\n4. The widget of claim 2, round.")
    errors = claims_check(claims)
    assert errors["claims_numbered"] == ["claim 2 is followed by claim 4"]
    assert errors["dependencies_valid"] == []


def test_numbering_must_start_at_one_and_not_repeat():
    errors = claims_check(claims_parse("2. A widget.\n3. A gadget.\n3. A gizmo."))
    assert "claims must start at 1, not 2" in errors["claims_numbered"]
    assert "claim 3 is numbered twice" in errors["claims_numbered"]


def test_a_forward_reference_fails():
    claims = claims_parse("1. A widget.\n2. The widget of claim 3, blue.\n3. The widget of claim 1, round.")
    errors = claims_check(claims)
    assert errors["dependencies_valid"] == ["claim 2 refers to claim 3, which is not an earlier claim"]
    assert errors["claims_numbered"] == []


def test_a_self_reference_and_a_missing_claim_fail():
    claims = claims_parse("1. A widget.\n3. The widget of claim 3.\n4. The widget of claim 2.")
    errors = claims_check(claims)["dependencies_valid"]
    assert "claim 3 refers to claim 3, which is not an earlier claim" in errors
    assert "claim 4 refers to claim 2, which does not exist" in errors


def test_no_independent_claim_fails():
    claims = claims_parse("1. The widget of claim 1.\n2. The widget according to claim 1, blue.")
    assert claims_check(claims)["has_independent_claim"] == ["there is no independent claim"]


def test_no_claims_at_all_fails_numbering_and_independence():
    errors = claims_check(claims_parse("Here are some thoughts, but no claims."))
    assert errors["claims_numbered"] == ["no numbered claims found"]
    assert errors["has_independent_claim"] == ["there is no independent claim"]


def test_abstract_word_limit_is_150():
    assert abstract_check(" ".join(["word"] * 150)) == []
    assert abstract_check(" ".join(["word"] * 151)) == ["the abstract has 151 words; at most 150 are allowed"]
    assert abstract_check("   ") == ["the abstract is empty"]


def test_draft_check_marks_parts_not_drafted_as_not_applicable():
    checks = draft_check(claims=None, abstract="A short abstract.")
    assert checks == {"claims_numbered": None, "dependencies_valid": None, "has_independent_claim": None,
                      "abstract_length": []}
    assert failed(checks) == {}


def test_format_round_trips():
    claims = claims_parse(GOOD)
    assert [(c.number, c.text) for c in claims_parse(claims_format(claims))] == [(c.number, c.text) for c in claims]
