from __future__ import annotations

import os

import pytest
from django.db import connection


@pytest.fixture
def postgres(transactional_db):
    """Race tests run against PostgreSQL with real parallel requests; CI always has it."""
    if connection.vendor != "postgresql":
        if os.environ.get("CI"):
            pytest.fail("CI must run the race tests on PostgreSQL (set DATABASE_URL).")
        pytest.skip("needs PostgreSQL: set DATABASE_URL (CI does)")
