"""Enqueue a Celery task by name once the current transaction commits.

Services enqueue by name so that they never import metering/tasks.py (tasks import services: the
dependency points one way). The task is looked up in the app's registry, so eager mode (embedded
default, tests) still runs it inline."""

from __future__ import annotations

import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger("gateway.metering")


def task_enqueue(name: str, *args: Any) -> None:
    from gateway_project.celery import app

    app.signature(name, args=args).delay()


def task_enqueue_on_commit(name: str, *args: Any) -> None:
    # robust: a broker outage must not turn a call that was charged into a 500; the beat sweepers
    # pick up whatever was not enqueued.
    transaction.on_commit(lambda: task_enqueue(name, *args), robust=True)
