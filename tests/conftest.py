"""Fixtures shared by the test files."""

import pytest
from local_processes import single_thread


@pytest.fixture
def one_thread():
    """Each test that asks for it runs on one thread (`local_processes.single_thread`)."""
    with single_thread():
        yield
