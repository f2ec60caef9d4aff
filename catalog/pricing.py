"""The one price rule: what a call's usage costs on a model, in integer micro-USD.

Prices are integer micro-USD per one million tokens (the catalog's unit). A call's prompt tokens
split three ways, as the providers bill them:

- `tokens_in` is ALL prompt tokens, cached and cache-written ones included (so token limits keep
  counting every token the model read, whatever it cost);
- `tokens_cached_in` of them were read from the provider's prompt cache (OpenAI
  `prompt_tokens_details.cached_tokens`, Anthropic `cache_read_input_tokens`, Gemini
  `cachedContentTokenCount`), billed at the cached-input price;
- `tokens_cache_write` of them were written to the cache (Anthropic `cache_creation_input_tokens`),
  billed at the cache-write price;
- the rest are billed at the input price, and output tokens at the output price.

A model whose cached-input (or cache-write) price is not set (NULL) has no such discount (or
surcharge): those tokens are billed at its input price. That is the explicit rule, never a guess
that under-bills; seed_catalog sets the published rates of the models it seeds.

The sum is rounded up once, to the next micro-USD, so no call is ever under-billed.
"""

from __future__ import annotations

MTOK = 1_000_000


def cost_micro_usd(*, tokens_in: int, tokens_out: int, tokens_cached_in: int = 0, tokens_cache_write: int = 0,
                   input_price: int | None, output_price: int | None, cached_input_price: int | None = None,
                   cache_write_price: int | None = None) -> int:
    """Integer cost of one call's usage. Cached and cache-write counts beyond the prompt are
    clamped into it (a provider's report is never allowed to make the uncached part negative)."""
    base = input_price or 0
    cached = max(0, min(tokens_cached_in, tokens_in))
    written = max(0, min(tokens_cache_write, tokens_in - cached))
    uncached = tokens_in - cached - written
    numerator = (uncached * base
                 + cached * (base if cached_input_price is None else cached_input_price)
                 + written * (base if cache_write_price is None else cache_write_price)
                 + tokens_out * (output_price or 0))
    return -(-numerator // MTOK)


def worst_input_price(*, input_price: int | None, cached_input_price: int | None = None,
                      cache_write_price: int | None = None) -> int:
    """The most one prompt token can cost on a model (a cache write can cost more than plain input):
    what worst-case holds and budget fitting price the counted input at."""
    return max(p for p in (input_price or 0, cached_input_price or 0, cache_write_price or 0))
