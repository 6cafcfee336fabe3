"""Shared pytest fixtures and markers (keep this small: every subsystem's tests import it).

`shared_dir` / `SHARED_DIR`: the sibling ../shared folder of the checkout (datasets, notes). A user's
fresh clone has no ../shared, so tests that need it carry `@requires_shared` and skip with a reason.
Import the marker with `from conftest import requires_shared` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import pytest

SHARED_DIR = Path(__file__).resolve().parents[2] / "shared"

requires_shared = pytest.mark.skipif(
    not SHARED_DIR.is_dir(), reason="../shared is absent (a user's clone has no ../shared)"
)


def shared_path(*parts: str) -> Path:
    """Path under ../shared (may not exist; combine with `requires_shared`)."""
    return SHARED_DIR.joinpath(*parts)


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    """The ../shared folder; skips the test when it is absent."""
    if not SHARED_DIR.is_dir():
        pytest.skip("../shared is absent (a user's clone has no ../shared)")
    return SHARED_DIR
