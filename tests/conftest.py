"""Shared fixtures: where the test data lives."""

from pathlib import Path

import pytest

TESTS = Path(__file__).parent
CONFIGS = TESTS / "data" / "configs"
REPO = TESTS.parent


@pytest.fixture
def configs() -> Path:
    """The folder of test config files (tests/data/configs)."""
    return CONFIGS
