"""Prior-art search clients: USPTO Open Data Portal, EPO OPS (patents) and OpenAlex (literature)."""
