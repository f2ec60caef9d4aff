"""Local, offline token counting so `max_tokens_in` is enforced before any provider is called.

The estimate counts words and punctuation marks separately and never reports fewer tokens
than a quarter of the UTF-8 bytes; BPE tokenizers typically produce about that many or fewer
for English prose, so the estimate errs on the side of counting too many. Settlement always
uses the provider's reported usage.
"""

from __future__ import annotations

import re
from typing import Any

_PIECES = re.compile(r"\w+|[^\w\s]", re.UNICODE)
MESSAGE_OVERHEAD = 4  # role and separators, as in OpenAI's chat format accounting


def text_tokens(text: str) -> int:
    return max(len(_PIECES.findall(text)), -(-len(text.encode()) // 4))


def message_text(message: dict[str, Any]) -> str:
    content = message.get("content", "")
    if isinstance(content, list):  # OpenAI content parts
        return " ".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content or "")


def messages_tokens(messages: list[dict[str, Any]]) -> int:
    return sum(text_tokens(message_text(m)) + MESSAGE_OVERHEAD for m in messages) + 2
