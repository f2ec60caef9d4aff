"""The staff console under /console/ (staff sessions; writes need a superuser).

Pages: overview (/console/), tenants (/console/tenants/, /console/tenants/<slug>/ with quota bars,
usage charts, effective limits and the overrides editor), plan changes (/console/plan-changes/),
plan matrix (/console/plans/), quota requests (/console/quota-requests/; tenant admins ask through
/api/quota-requests/), reports with CSV (/console/reports/) and the audit log (/console/audit/).

Usage is read from the per-day rollup `metering.UsageDaily` (one upsert per ledger row, written in
the settlement transaction) and from indexed lookups, never from a ledger scan. The audit log lives
in `tenants.audit`; this app's admin module re-registers the audited admins (see admin.py).
Commands: usage_report, generate_usage (load data), bench_console (page times on the current DB).
"""
