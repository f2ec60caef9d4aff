"""Tasks enqueued by name (metering/dispatch.py) run in a process that never imported their module:
a web process of the embedded default, where Celery is eager."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import os, sys
os.environ["DJANGO_SETTINGS_MODULE"] = "gateway_project.settings"
import django
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from gateway_project.celery import app
app.conf.task_always_eager = True
assert "metering.tasks" not in sys.modules
from metering.dispatch import task_enqueue
result = task_enqueue("metering.tasks.send_usage_digests", "2026-01-01")
print(type(result).__name__, result.get())  # eager: it ran here, not sent to a broker that does not exist
"""


def test_a_task_enqueued_by_name_runs_eagerly_in_a_fresh_web_process(tmp_path):
    # The embedded default (no broker), on a database of its own.
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DATABASE_URL": f"sqlite:///{tmp_path / 'db.sqlite3'}"}
    done = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["EagerResult", "0"], done.stdout  # it ran: no tenant had usage that day
