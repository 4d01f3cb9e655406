"""Fixtures for the local provider's tests: one provider per session, sandboxes per test."""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable

import pytest

from providers.base import InstanceSpec
from providers.errors import ProviderError
from providers.local import LocalInstance, LocalProvider
from tests.local_support import local_provider

_ids = itertools.count(1)


def new_spec(**overrides) -> InstanceSpec:
    values = {
        "sandbox_id": f"sbx-t{next(_ids):05d}",
        "preset_id": "1vcpu_512mb_4gb",
        "vcpus": 1,
        "memory_mb": 512,
        "disk_gb": 4,
    }
    values.update(overrides)
    return InstanceSpec(**values)


def metadata(spec: InstanceSpec) -> dict[str, str]:
    return {"sandbox_id": spec.sandbox_id, "team": "tests", "preset": spec.preset_id}


def wait_for(predicate: Callable[[], object], *, timeout: float = 15.0, every: float = 0.02):
    """Poll until ``predicate()`` is truthy; return its value. A wait, not a timing check."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {predicate}")
        time.sleep(every)


@pytest.fixture(scope="session")
def local(tmp_path_factory) -> LocalProvider:
    with local_provider(tmp_path_factory.mktemp("local-root")) as provider:
        yield provider


class Sandboxes:
    """Makes sandboxes on a provider and deletes them all at the end of the test."""

    def __init__(self) -> None:
        self.made: list[LocalInstance] = []

    def create(self, provider: LocalProvider, snapshot_ref: str = "base", **spec) -> LocalInstance:
        made = new_spec(**spec)
        instance = provider.create(made, snapshot_ref, metadata(made))
        self.made.append(instance)
        return instance

    def running(self, provider: LocalProvider, snapshot_ref: str = "base", **spec):
        instance = self.create(provider, snapshot_ref, **spec)
        instance.start()
        return provider.get(instance.id)

    def cleanup(self) -> None:
        for instance in self.made:
            with contextlib.suppress(ProviderError, OSError):
                instance.delete()


@pytest.fixture
def sandboxes() -> Sandboxes:
    made = Sandboxes()
    yield made
    made.cleanup()


def sh(instance: LocalInstance, command: str, timeout: float = 30) -> str:
    """Run ``command`` in the sandbox; fail the test unless it exits 0; return stdout."""
    result = instance.exec(command, timeout=timeout)
    assert result.exit_code == 0, (command, result)
    return result.stdout
