"""What the providers report, taken once per sweep: one ``list()`` call per provider.

Reconciliation, idle hibernation and orphan collection all compare the database with
this picture. Looking instances up by reference in the maps below (never a ``get`` per
sandbox) is what lets one sweep cover ten thousand sandboxes in a couple of seconds.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

from django.utils import timezone

from providers.base import META_SANDBOX_ID, Instance
from providers.errors import ProviderError
from sandboxes.services.backends import backends

logger = logging.getLogger(__name__)


@dataclass
class ProviderInventory:
    """One provider's instances, keyed by reference and by the sandbox id they carry."""

    name: str
    #: When the list was taken: rows that changed after this are not judged by it.
    taken_at: datetime
    by_ref: dict[str, Instance] = field(default_factory=dict)
    by_sandbox_id: dict[str, list[Instance]] = field(default_factory=dict)

    def find(self, *, ref: str, sandbox_id: str) -> Instance | None:
        """The sandbox's instance: by its recorded reference, else by its marker."""
        if ref:
            return self.by_ref.get(ref)
        candidates = self.by_sandbox_id.get(sandbox_id) or []
        return candidates[0] if candidates else None


@dataclass
class Inventory:
    providers: dict[str, ProviderInventory] = field(default_factory=dict)
    #: Providers whose list failed this sweep (name -> message): their sandboxes are left
    #: alone rather than judged on missing information.
    unavailable: dict[str, str] = field(default_factory=dict)

    def get(self, provider: str) -> ProviderInventory | None:
        return self.providers.get(provider)


def take_inventory() -> Inventory:
    inventory = Inventory()
    for name, provider in backends().providers.items():
        taken_at = timezone.now()
        try:
            instances = provider.list()
        except ProviderError as exc:
            logger.warning("listing %s failed: %s", name, exc.message)
            inventory.unavailable[name] = exc.message
            continue
        listed = ProviderInventory(name=name, taken_at=taken_at)
        for instance in instances:
            listed.by_ref[instance.id] = instance
            sandbox_id = instance.metadata.get(META_SANDBOX_ID, "")
            if sandbox_id:
                listed.by_sandbox_id.setdefault(sandbox_id, []).append(instance)
        inventory.providers[name] = listed
    return inventory
