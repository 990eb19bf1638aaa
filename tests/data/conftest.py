"""Shared fixtures for the data-layer tests: small cohorts built once per session."""

from __future__ import annotations

import numpy as np
import pytest

from fedpriv.data import make_phantom_cohort


@pytest.fixture(scope="session")
def phantoms32():
    """400 phantoms at 32x32 with 4 balanced classes (read-only: do not modify)."""
    return make_phantom_cohort(400, 32, np.random.default_rng(1234))
