"""Local token counting: exact and offline for OpenAI models, a conservative estimate elsewhere.

The exact counts are checked against token ids published in OpenAI's cookbook ("How to count
tokens with tiktoken"), computed by the encodings built here from the files bundled in the
bpe-openai package, with the network and tiktoken's own download path disabled.
"""

from __future__ import annotations

import hashlib
import inspect
import os
import re
import socket

import pytest
import tiktoken.load
import tiktoken_ext.openai_public as openai_public

from llm import tokenizer
from llm.tokenizer import (
    ENCODINGS,
    bundled_ranks_bytes,
    encoding,
    encoding_name_for_model,
    estimate_text_tokens,
    messages_tokens,
    text_tokens,
)

# From the OpenAI cookbook: (cl100k_base ids, o200k_base ids).
KNOWN_TOKENS = {
    "tiktoken is great!": ([83, 1609, 5963, 374, 2294, 0], [83, 8251, 2488, 382, 2212, 0]),
    "antidisestablishmentarianism": (
        [519, 85342, 34500, 479, 8997, 2191], [493, 129901, 376, 160388, 21203, 2367],
    ),
    "2 + 2 = 4": ([17, 489, 220, 17, 284, 220, 19], [17, 659, 220, 17, 314, 220, 19]),
    "お誕生日おめでとう": (
        [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
        [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669],
    ),
}

# The cookbook's example chat; it reports 129 prompt tokens for gpt-3.5-turbo / gpt-4 and 124 for
# gpt-4o / gpt-4o-mini, matching the API's usage.prompt_tokens.
COOKBOOK_MESSAGES = [
    {"role": "system", "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
                                  "into plain English."},
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {"role": "system", "name": "example_assistant", "content": "Things working well together will increase revenue."},
    {"role": "system", "name": "example_user", "content": "Let's circle back when we have more bandwidth to touch base "
                                                          "on opportunities for increased leverage."},
    {"role": "system", "name": "example_assistant", "content": "Let's talk later when we're less busy about how to do "
                                                               "better."},
    {"role": "user", "content": "This late pivot means we don't have time to boil the ocean for the client "
                                "deliverable."},
]

SENTENCES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "interact",
    "Summarizing:",
    "A method for manufacturing a semiconductor device, comprising: forming a gate electrode over a substrate.",
    "WHAT IS CLAIMED IS:",
    "1. An apparatus comprising a processor and a memory storing instructions that, when executed, cause the "
    "processor to:",
    "BACKGROUND OF THE INVENTION",
    "Field of the Invention",
    "The present disclosure relates generally to wireless communication systems, and more particularly to beam "
    "management.",
    "In some embodiments, the thermoplastic polyurethane has a Shore A hardness between 85 and 95.",
    "See U.S. Pat. No. 9,876,543 to Smith et al., filed Jan. 3, 2017, and EP 3 456 789 A1.",
    "FIG. 3 is a cross-sectional view taken along line III-III' of FIG. 2.",
    "Prior-art search: find references disclosing electrochemical impedance spectroscopy for lithium-ion cells.",
    "Draft an independent claim covering a neural network accelerator with on-chip SRAM and a systolic array.",
    "Generate a block diagram: sensor -> ADC -> DSP -> radio; label each block with its reference numeral "
    "(102, 104, 106, 108).",
    "Please summarize the following abstract in three bullet points.",
    "- First item\n- Second item\n- Third item with **bold** and _italic_ text",
    "## Detailed Description\n\nReference will now be made in detail to embodiments illustrated in the "
    "accompanying drawings.",
    "The temperature was raised from 25 °C to 1,250 °C over 3.5 hours at a rate of approximately 5.7 K/min.",
    "Contact support@example.com or visit https://www.example.com/docs/getting-started?lang=en#install for details.",
    "def add(a: int, b: int) -> int:\n    return a + b\n",
    "for (let i = 0; i < items.length; i++) {\n  console.log(items[i]);\n}",
    '{"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 128}',
    "SELECT id, name FROM patents WHERE filed_at >= '2020-01-01' ORDER BY filed_at DESC LIMIT 10;",
    "It's a well-known fact that we'd rather they'll've been there; isn't it?",
    "Antidisestablishmentarianism and pneumonoultramicroscopicsilicovolcanoconiosis are long words.",
    "CamelCaseIdentifiersLikeHTTPServerErrorAndXMLParser appear in code.",
    "The ratio was 0.000123456789 and the count was 1234567890123.",
    "Q: What is 17 * 23? A: 391.",
    "Yes.",
    "No",
    "OK",
    "Thanks!",
    "TL;DR: the invention reduces power consumption by ~40% (see Table 2).",
    'The user\'s request was: "Explain the difference between a continuation and a divisional application."',
    "   Indented text with    irregular     spacing   and trailing spaces   ",
    "Line one\nLine two\n\n\nLine five after blank lines",
    "E = mc^2; F = ma; PV = nRT; ΔG = ΔH − TΔS.",
    "Résumé, naïve café, and façade are English words borrowed from French.",
    "The claims were rejected under 35 U.S.C. § 103 as being obvious over Jones in view of Lee.",
    "Version 2.14.0-rc.1+build.5 fixed CVE-2024-12345 and GHSA-abcd-efgh-ijkl.",
    "a b c d e f g h i j k l m n o p q r s t u v w x y z",
    "!!! ??? ... --- *** ### @@@ $$$ %%% ^^^ &&& ((( )))",
    "Great job 🎉🚀👍 see you soon 😀",
]
OTHER_SCRIPTS = [
    "专利申请需要详细描述发明的技术方案和实施例。",
    "特許請求の範囲に記載された発明は新規性を有する。",
    "Изобретение относится к области электротехники и может быть использовано.",
    "Die Erfindung betrifft ein Verfahren zur Herstellung eines Halbleiterbauelements.",
    "الاختراع يتعلق بطريقة لتصنيع جهاز أشباه الموصلات",
    "특허 청구 범위에 기재된 발명은 신규성을 가진다.",
]
DOCUMENTED_MARGIN = 0.10  # the module docstring: never more than 10 % below the exact o200k count


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to reach the network (or tiktoken's download/cache path) fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args[1:] if len(args) > 1 else args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file_cached", refuse)
    monkeypatch.setattr(tiktoken.load, "read_file", refuse)


# ---------------------------------------------------------------------------------- the bundled files


def _tiktoken_expected_hash(name: str) -> str:
    source = inspect.getsource(getattr(openai_public, name))
    return re.search(r'expected_hash="([0-9a-f]{64})"', source).group(1)


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_bundled_files_have_the_sha256_tiktoken_expects(name):
    digest = hashlib.sha256(bundled_ranks_bytes(name)).hexdigest()

    assert digest == _tiktoken_expected_hash(name)
    assert ENCODINGS[name].sha256 == digest


@pytest.mark.parametrize("name", ["o200k_base", "cl100k_base"])
def test_encodings_use_tiktokens_own_pattern_and_special_tokens(monkeypatch, name):
    loaded = encoding(name)
    monkeypatch.setattr(openai_public, "load_tiktoken_bpe", lambda *args, **kwargs: {})
    official = getattr(openai_public, name)()

    assert ENCODINGS[name].pat_str == official["pat_str"] == loaded._pat_str
    assert ENCODINGS[name].special_tokens == official["special_tokens"] == loaded._special_tokens
    assert loaded.max_token_value == max(official["special_tokens"].values())


def test_a_tampered_file_is_refused(monkeypatch):
    tokenizer.encoding_cache_clear()
    monkeypatch.setattr(tokenizer, "bundled_ranks_bytes", lambda name: b"IQ== 0\n")
    try:
        with pytest.raises(tokenizer.TokenizerDataError, match="sha256"):
            encoding("o200k_base")
    finally:
        tokenizer.encoding_cache_clear()


# ---------------------------------------------------------------------------------- exact counts


def test_encodings_load_and_count_with_the_network_off(no_network):
    tokenizer.encoding_cache_clear()  # load from scratch, offline
    environment_before = dict(os.environ)

    for text, (cl100k_ids, o200k_ids) in KNOWN_TOKENS.items():
        assert encoding("cl100k_base").encode(text) == cl100k_ids
        assert encoding("o200k_base").encode(text) == o200k_ids
        assert text_tokens(text, "gpt-4") == len(cl100k_ids)
        assert text_tokens(text, "gpt-4o") == len(o200k_ids)

    assert "TIKTOKEN_CACHE_DIR" not in os.environ and dict(os.environ) == environment_before


@pytest.mark.parametrize(("model", "name"), [
    ("gpt-4o", "o200k_base"), ("gpt-4o-mini", "o200k_base"), ("gpt-4o-2024-08-06", "o200k_base"),
    ("gpt-4.1", "o200k_base"), ("gpt-4.1-mini", "o200k_base"), ("gpt-5", "o200k_base"), ("gpt-5-mini", "o200k_base"),
    ("o1", "o200k_base"), ("o3-mini", "o200k_base"), ("o4-mini", "o200k_base"), ("chatgpt-4o-latest", "o200k_base"),
    ("gpt-4", "cl100k_base"), ("gpt-4-turbo", "cl100k_base"), ("gpt-3.5-turbo", "cl100k_base"),
])
def test_openai_models_count_exactly(model, name):
    assert encoding_name_for_model(model) == name
    enc = encoding(name)
    for text in [*SENTENCES, *OTHER_SCRIPTS, ""]:
        assert text_tokens(text, model) == len(enc.encode_ordinary(text)), text


@pytest.mark.parametrize("model", [
    None, "", "grok-4", "grok-3-mini", "gemini-2.5-pro", "gemini-2.0-flash", "claude-sonnet-4-5", "claude-3-5-haiku",
    "llama3.1:8b", "qwen2.5-coder", "gpt-oss-20b",  # gpt-oss uses o200k_harmony: not bundled, so estimated
    "offline-small", "text-davinci-003",
])
def test_other_models_use_the_estimate(model):
    assert encoding_name_for_model(model) is None
    for text in SENTENCES:
        assert text_tokens(text, model) == estimate_text_tokens(text)


def test_special_token_text_in_user_input_is_counted_as_ordinary_text():
    text = "ignore <|endoftext|> and <|endofprompt|>"
    assert text_tokens(text, "gpt-4o") == len(encoding("o200k_base").encode(text, disallowed_special=()))
    assert text_tokens(text, "gpt-4o") > 3


@pytest.mark.parametrize(("model", "expected"), [
    ("gpt-3.5-turbo", 129), ("gpt-4-0613", 129), ("gpt-4", 129), ("gpt-4o", 124), ("gpt-4o-mini", 124),
])
def test_chat_framing_matches_openais_documented_counts(model, expected):
    assert messages_tokens(COOKBOOK_MESSAGES, model) == expected


def test_message_parts_names_and_tool_calls_are_counted():
    base = [{"role": "user", "content": "Find prior art for a folding hinge."}]
    parts = [{"role": "user", "content": [{"type": "text", "text": "Find prior art"},
                                          {"type": "text", "text": "for a folding hinge."}]}]
    named = [{"role": "user", "name": "examiner", "content": "Find prior art for a folding hinge."}]
    tool = [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "search", "arguments": '{"q": "hinge"}'}}]}]
    for model in ("gpt-4o", None):
        assert messages_tokens(parts, model) >= messages_tokens(base, model) - 1
        assert messages_tokens(named, model) > messages_tokens(base, model)
        assert messages_tokens(tool, model) > messages_tokens([{"role": "assistant", "content": None}], model)
        assert messages_tokens([{"role": "tool", "tool_call_id": "call_1", "content": "ok"}], model) > \
            messages_tokens([{"role": "tool", "content": "ok"}], model)
    assert messages_tokens([], "gpt-4o") == tokenizer.REPLY_PRIMING


# ---------------------------------------------------------------------------------- the estimate


def test_the_estimate_never_undercounts_the_sample_sentences():
    o200k, cl100k = encoding("o200k_base"), encoding("cl100k_base")
    for text in SENTENCES:
        assert estimate_text_tokens(text) >= len(o200k.encode_ordinary(text)), text
        assert estimate_text_tokens(text) >= len(cl100k.encode_ordinary(text)), text


def test_the_estimate_is_conservative_for_other_scripts():
    o200k, cl100k = encoding("o200k_base"), encoding("cl100k_base")
    for text in OTHER_SCRIPTS:
        assert estimate_text_tokens(text) >= len(o200k.encode_ordinary(text)), text
        assert estimate_text_tokens(text) >= len(cl100k.encode_ordinary(text)), text


def test_the_estimate_stays_within_the_documented_margin_on_the_python_docs():
    from pydoc_data.topics import topics

    paragraphs = [p for p in re.split(r"\n\s*\n", "\n".join(topics.values())) if p.strip()]
    assert len(paragraphs) > 1000
    o200k = encoding("o200k_base")
    exact_total = estimated_total = 0
    for paragraph in paragraphs:
        exact, estimated = len(o200k.encode_ordinary(paragraph)), estimate_text_tokens(paragraph)
        assert estimated >= (1 - DOCUMENTED_MARGIN) * exact, paragraph[:200]
        exact_total += exact
        estimated_total += estimated
    # Conservative in aggregate, and not absurdly so.
    assert exact_total <= estimated_total <= 1.6 * exact_total


def test_the_estimated_chat_is_above_the_exact_chat():
    chats = [COOKBOOK_MESSAGES, *([{"role": "user", "content": s}] for s in SENTENCES)]
    for messages in chats:
        estimated = messages_tokens(messages)
        assert estimated >= messages_tokens(messages, "gpt-4o"), messages
        assert estimated >= messages_tokens(messages, "gpt-4"), messages


def test_the_estimate_grows_with_the_text_and_ignores_nothing():
    assert estimate_text_tokens("") == 0
    assert estimate_text_tokens("word " * 40) > estimate_text_tokens("word " * 20) > estimate_text_tokens("word")
    assert estimate_text_tokens("1" * 30) >= 10  # digits: one token per three
    assert estimate_text_tokens(" " * 300) >= 1


def test_odd_input_is_counted_not_refused():
    for text in ("\ud800 lone surrogate", "nul\x00 and \x1b[0m escapes", "\u00a0\u3000\u200b", "e\u0301\u0301"):
        assert estimate_text_tokens(text) > 0
        assert text_tokens(text, "gpt-4o") > 0
        assert messages_tokens([{"role": "user", "content": text}]) > 0
