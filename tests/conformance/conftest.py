"""The provider under test, once per entry in ``harnesses.HARNESSES``, for every module."""

from __future__ import annotations

import contextlib

import pytest

from providers.errors import ProviderError
from tests.conformance.harnesses import HARNESSES, ProviderUnderTest


@pytest.fixture(scope="module", params=sorted(HARNESSES))
def put(request, tmp_path_factory) -> ProviderUnderTest:
    with HARNESSES[request.param](tmp_path_factory) as under_test:
        yield under_test


@pytest.fixture
def pt(put: ProviderUnderTest) -> ProviderUnderTest:
    """The provider under test; deletes every instance the test made."""
    yield put
    for instance in put.made:
        with contextlib.suppress(ProviderError):
            instance.delete()
    put.made.clear()
