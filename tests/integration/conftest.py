from __future__ import annotations

import pytest

from tests.conftest import require_postgres


@pytest.fixture
def postgres(transactional_db):
    """Race tests run against PostgreSQL with real parallel requests; CI always has it."""
    require_postgres()
