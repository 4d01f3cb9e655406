from __future__ import annotations

import pytest

from tests.background import harness


@pytest.fixture(scope="module", params=harness.ALL)
def any_put(request, tmp_path_factory):
    """Each provider of the conformance suite, set up once per module."""
    with harness.harness(request.param, tmp_path_factory) as put:
        yield request.param, put


@pytest.fixture(scope="module", params=harness.CROSS_PROCESS)
def shared_put(request, tmp_path_factory):
    """Providers that real worker processes can share."""
    with harness.harness(request.param, tmp_path_factory) as put:
        yield request.param, put


@pytest.fixture
def backend(any_put, presets):
    name, put = any_put
    active = harness.activate(name, put)
    yield active
    harness.clean_up(active)


@pytest.fixture
def shared_backend(shared_put, presets):
    name, put = shared_put
    active = harness.activate(name, put)
    yield active
    harness.clean_up(active)
