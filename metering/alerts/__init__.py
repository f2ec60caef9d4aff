"""Alert delivery: channels (email, in-app, signed webhooks, Slack, Microsoft Teams), the delivery
log, retries with backoff, the daily usage digest and notification pruning. See README.md here."""
