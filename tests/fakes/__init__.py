"""Loopback fakes of the external services the gateway calls, for tests that go through the real clients.

The LLM provider fakes (`FakeOpenAI`, `FakeGemini`, `FakeAnthropic`) each run a real HTTP/1.1 server
on 127.0.0.1 in a background thread speaking that provider's wire protocol. They answer
deterministically from the request, count their own tokens, keep a ledger of what they billed
(`billed`), and can be told to misbehave: see `FakeProvider` in `tests.fakes.base` for the fault script.
"""

from tests.fakes.anthropic_fake import FakeAnthropic
from tests.fakes.base import FakeProvider, closed_port
from tests.fakes.gemini_fake import FakeGemini
from tests.fakes.openai_fake import FakeOpenAI

__all__ = ["FakeAnthropic", "FakeGemini", "FakeOpenAI", "FakeProvider", "closed_port"]
