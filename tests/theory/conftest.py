"""The labs' tiny tensor work runs on one intra-op thread (as the labs themselves do)."""

import pytest

from unlearning.theory.runtime import single_threaded


@pytest.fixture(autouse=True)
def _one_thread():
    with single_threaded():
        yield
