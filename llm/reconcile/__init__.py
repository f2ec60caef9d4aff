"""Reconciliation with the providers' own billing (issue 15 §2).

`manage.py reconcile_provider_usage --provider openai|anthropic|gemini|grok --from DAY --to DAY`
reads the provider's organisation usage (and cost) report for those UTC days with an admin key,
compares it per day and model with the ledger's daily rollup (metering.UsageDaily, never a ledger
scan), records the run (ProviderReconciliation + rows) and alerts super admins when a figure drifts
over the threshold (RECONCILE_DRIFT_*).

- clients.py: the OpenAI and Anthropic admin report clients (the wire formats);
- selectors.py: the ledger side and the console's reads;
- services.py: compare, record, alert.
"""
