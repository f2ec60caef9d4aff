"""A minimal, fast OpenAI-compatible upstream for `make bench` (an ASGI app served by uvicorn).

POST /v1/chat/completions answers a fixed 20-token completion after FAKE_UPSTREAM_LATENCY_MS,
as JSON or as server-sent events with a final usage chunk. Raw ASGI, no framework: the bench
should measure the gateway, not its upstream.
"""

from __future__ import annotations

import asyncio
import json
import os
import time

LATENCY = int(os.environ.get("FAKE_UPSTREAM_LATENCY_MS", "0")) / 1000
WORDS = ["claim"] * 20


async def read_body(receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def app(scope, receive, send) -> None:
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    request = json.loads(await read_body(receive) or b"{}")
    model = request.get("model", "gpt-4o")
    usage = {"prompt_tokens": 12, "completion_tokens": len(WORDS), "total_tokens": 12 + len(WORDS)}
    created = int(time.time())
    if not request.get("stream"):
        if LATENCY:
            await asyncio.sleep(LATENCY)
        payload = {"id": "chatcmpl-bench", "object": "chat.completion", "created": created, "model": model,
                   "choices": [{"index": 0, "message": {"role": "assistant", "content": " ".join(WORDS)},
                                "finish_reason": "stop"}], "usage": usage}
        body = json.dumps(payload).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]})
    step = LATENCY / len(WORDS)

    def chunk(delta, finish=None, extra=None):
        data = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
        if extra:
            data.update(extra)
        return b"data: " + json.dumps(data).encode() + b"\n\n"

    await send({"type": "http.response.body", "body": chunk({"role": "assistant", "content": ""}), "more_body": True})
    for index, word in enumerate(WORDS):
        if step:
            await asyncio.sleep(step)
        text = word if index == 0 else " " + word
        await send({"type": "http.response.body", "body": chunk({"content": text}), "more_body": True})
    await send({"type": "http.response.body", "body": chunk({}, "stop"), "more_body": True})
    if (request.get("stream_options") or {}).get("include_usage"):
        tail = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage}
        await send({"type": "http.response.body", "body": b"data: " + json.dumps(tail).encode() + b"\n\n",
                    "more_body": True})
    await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})
