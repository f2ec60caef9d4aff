"""Enqueue a Celery task by name once the current transaction commits.

Services enqueue by name so that they never import metering/tasks.py (tasks import services: the
dependency points one way). The task is looked up in the app's registry, so eager mode (embedded
default, tests) still runs it inline."""

from __future__ import annotations

import importlib
import logging
from typing import Any

from django.db import transaction

logger = logging.getLogger("gateway.metering")


def task_enqueue(name: str, *args: Any) -> Any:
    from gateway_project.celery import app

    if name not in app.tasks:
        # A web process never imports the task modules (only a worker's start-up does): without
        # this, eager mode would hand the task to a broker that does not exist instead of running it.
        importlib.import_module(name.rsplit(".", 1)[0])
    return app.signature(name, args=args).delay()


def task_enqueue_on_commit(name: str, *args: Any) -> None:
    # robust: a broker outage must not turn a call that was charged into a 500; the beat sweepers
    # pick up whatever was not enqueued.
    transaction.on_commit(lambda: task_enqueue(name, *args), robust=True)
