"""Shared pytest fixtures and markers (keep this small: every subsystem's tests import it).

`shared_dir` / `SHARED_DIR`: the sibling ../shared folder of the checkout (datasets, notes). A user's
fresh clone has no ../shared, so tests that need it carry `@requires_shared` and skip with a reason.
Import the marker with `from conftest import requires_shared` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
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


@pytest.fixture(scope="module")
def clustered():
    """4000 items in 20 clusters (d=16) and [8, 3, 16] interest queries near cluster centres (index tests)."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(20, 16))
    x = (centres[rng.integers(0, 20, 4000)] + 0.3 * rng.normal(size=(4000, 16))).astype(np.float32)
    q = (centres[rng.integers(0, 20, (8, 3))] + 0.3 * rng.normal(size=(8, 3, 16))).astype(np.float32)
    return x, q
