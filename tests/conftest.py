"""Shared test fixtures."""
import pytest
from ptycho import params

@pytest.fixture(autouse=True)
def _restore_legacy_params():
    saved = params.snapshot()
    yield
    params.restore(saved)
