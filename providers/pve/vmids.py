"""VMIDs that are safe under concurrency.

``/cluster/nextid`` only says what is free at the moment of asking and reserves nothing,
so two control-plane workers starting sandboxes at once would pick the same VMID. We
allocate from our own range (``PVE_VMID_RANGE``), skip every VMID the cluster already
uses, and take a reservation in the control plane's database (``ReservationStore``,
atomic by a unique constraint) before cloning. The reservation lives as long as the
guest does, so another worker never picks a VMID whose clone is still being made. If
PVE still says "already exists" (someone used the VMID in PVE's UI), the caller lets the
VMID go and allocates another.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from providers.base import ReservationStore
from providers.errors import QuotaExceeded


class VmidAllocator:
    def __init__(self, store: ReservationStore, namespace: str, vmid_range: tuple[int, int]):
        self.store = store
        self.namespace = namespace
        self.low, self.high = vmid_range

    def allocate(self, rows: list[dict], *, owner: str) -> int:
        used = {int(r["vmid"]) for r in rows if "vmid" in r}
        reserved = {int(k) for k in self.store.keys(self.namespace) if k.isdigit()}
        key = self.store.reserve(self.namespace, self._candidates(used | reserved), owner)
        if key is None:
            raise QuotaExceeded(
                f"no free VMID left in PVE_VMID_RANGE {self.low}-{self.high}; "
                "widen the range or delete unused guests"
            )
        return int(key)

    def _candidates(self, taken: set[int]) -> Iterator[str]:
        # Start at a random point so that two control planes sharing a cluster without
        # sharing a database rarely collide; wrap around the range.
        size = self.high - self.low + 1
        offset = random.randrange(size) if len(taken) < size // 2 else 0  # noqa: S311
        for index in range(size):
            vmid = self.low + (offset + index) % size
            if vmid not in taken:
                yield str(vmid)

    def release(self, vmid: int) -> None:
        self.store.release(self.namespace, str(vmid))
