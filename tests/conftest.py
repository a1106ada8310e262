"""Shared test fixtures."""
import pytest
from ptycho import params

@pytest.fixture(autouse=True, scope="module")
def _restore_legacy_params_after_module():
    """Module-scoped fixtures (a training run shared by a module's tests) configure params.cfg too."""
    saved = params.snapshot()
    yield
    params.restore(saved)


@pytest.fixture(autouse=True)
def _restore_legacy_params():
    saved = params.snapshot()
    yield
    params.restore(saved)
