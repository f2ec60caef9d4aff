"""The floor under the gateway's overhead, for `make bench`: a bare proxy that forwards a chat
completion through the same `openai` SDK call the gateway makes (AsyncOpenAI on the SDK's aiohttp
transport, `client.post`) and does nothing else: no authentication, policy, admission, settlement,
metrics or error mapping.

Its overhead over going direct is what any Python gateway built on the SDK pays on this machine
(ASGI server, JSON, the SDK's HTTP stack); the gateway's overhead minus this is its own work.
The upstream's base URL comes from OPENAI_BASE_URL, as for the gateway.
"""

from __future__ import annotations

import json
import os

import openai

from llm.benchmark.fake_openai import read_body

_client: openai.AsyncOpenAI | None = None


async def app(scope, receive, send) -> None:
    global _client
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _client = openai.AsyncOpenAI(base_url=os.environ["OPENAI_BASE_URL"],
                                             api_key=os.environ.get("OPENAI_API_KEY", "bench-key"),
                                             http_client=openai.DefaultAioHttpClient())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if scope["path"] == "/healthz":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
        return
    request = json.loads(await read_body(receive) or b"{}")
    assert _client is not None, "served without its lifespan start-up"
    body = {key: request.get(key) for key in ("model", "messages", "max_tokens")}
    completion = await _client.post("/chat/completions", body=body, cast_to=object)
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": json.dumps(completion).encode()})
