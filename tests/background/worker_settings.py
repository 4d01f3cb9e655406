"""Settings for the django-q2 worker processes the background tests start.

The test settings, plus:

* the test-only providers registered, so a worker builds them from ``SANDBOX_PROVIDERS``;
* ``Q_CLUSTER_NAME`` (django-q2's own): the queue the cluster takes tasks from, so two
  clusters with two names each take exactly the task meant for them (tasks are still
  signed with the shared ``Q_CLUSTER["name"]``);
* ``SBX_TEST_HOLD_DIR``: every enabled provider's ``create`` makes the instance, writes
  ``<dir>/entered.<pid>`` (the instance id inside) and waits while ``<dir>/hold`` exists,
  so a test can kill the worker right there: the instance exists, the worker never
  recorded it;
* ``SBX_TEST_LIST_BARRIER`` (a directory) and ``SBX_TEST_LIST_PARTIES`` (n): a provider's
  ``list`` (the first thing a sweep does) waits until n processes are inside it, so n
  sweeps in n workers run at the same moment.
"""

import os
import time
from pathlib import Path

from config.settings_test import *  # noqa: F403
from config.settings_test import Q_CLUSTER
from providers.registry import provider_class, register_provider
from tests import filestore_provider, memory_provider

register_provider(filestore_provider.NAME, lambda: filestore_provider.FileStoreProvider)
register_provider(memory_provider.NAME, lambda: memory_provider.MemoryProvider)

Q_CLUSTER["ALT_CLUSTERS"] = {}  # django-q2 expects the key once Q_CLUSTER_NAME is set


def _hold_after_create(cls, hold: Path) -> None:
    original = cls.create

    def create(self, spec, snapshot_ref, metadata):
        instance = original(self, spec, snapshot_ref, metadata)
        (hold / f"entered.{os.getpid()}").write_text(instance.id)
        while (hold / "hold").exists():
            time.sleep(0.05)
        return instance

    cls.create = create


def _barrier_in_list(cls, barrier: Path, parties: int) -> None:
    original = cls.list

    def list_(self):
        (barrier / f"list.{os.getpid()}").write_text("")
        deadline = time.monotonic() + 60  # never hang a worker for good
        while len(list(barrier.glob("list.*"))) < parties and time.monotonic() < deadline:
            time.sleep(0.02)
        return original(self)

    cls.list = list_


for _name in filter(None, (n.strip() for n in os.environ.get("SANDBOX_PROVIDERS", "").split(","))):
    if os.environ.get("SBX_TEST_HOLD_DIR"):
        _hold_after_create(provider_class(_name), Path(os.environ["SBX_TEST_HOLD_DIR"]))
    if os.environ.get("SBX_TEST_LIST_BARRIER"):
        _barrier_in_list(
            provider_class(_name),
            Path(os.environ["SBX_TEST_LIST_BARRIER"]),
            int(os.environ.get("SBX_TEST_LIST_PARTIES", "2")),
        )
