"""Reporting changes to the catalog (model classes, features, tasks, plans and their access, provider
models and their prices) to whoever records them.

The audit log lives in `tenants` (it knows users and tenants), and the catalog sits below tenants:
it may not import it. So the catalog's writers (its Django Admin) report each change here, and the
apps above plug their recorders in at startup -- tenants/apps.py adds the audit log's recorder and
the one that drops the identities of a plan's tenants when the plan is switched off or renamed.
A recorder runs inside the writer's transaction: the change and its record commit together.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.db import models

Recorder = Callable[..., None]
_recorders: list[Recorder] = []


def catalog_recorder_add(recorder: Recorder) -> None:
    """`recorder(*, action, object_type, object_id, before, after)` is called for every change."""
    if recorder not in _recorders:
        _recorders.append(recorder)


def catalog_row_snapshot(obj: models.Model) -> dict[str, Any]:
    """A row's own columns (foreign keys as ids)."""
    return {field.name: getattr(obj, field.attname) for field in obj._meta.concrete_fields
            if field.name != "id" and not getattr(field, "auto_now", False)
            and not getattr(field, "auto_now_add", False)}


def catalog_change_record(*, action: str, object_type: str, object_id: Any, before: dict | None,
                          after: dict | None) -> None:
    """Report one change; an update reports only the fields that differ (and nothing if none do)."""
    if before is not None and after is not None:
        names = [n for n in dict.fromkeys([*before, *after]) if before.get(n) != after.get(n)]
        if not names:
            return
        before, after = {n: before.get(n) for n in names}, {n: after.get(n) for n in names}
    for recorder in _recorders:
        recorder(action=action, object_type=object_type, object_id=object_id, before=before, after=after)
