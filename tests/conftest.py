"""Shared fixtures: the real sample models (tests/support/samples.py) and the test tiers' markers."""
from __future__ import annotations

from pathlib import Path

import pytest

from support.samples import SAMPLE_MODELS, sample_model


@pytest.fixture(params=sorted(SAMPLE_MODELS))
def any_sample_model(request: pytest.FixtureRequest) -> Path:
    return sample_model(request.param)
