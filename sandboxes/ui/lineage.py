"""Snapshot version lineage: the chain of parents a version was taken from."""

from __future__ import annotations

from collections.abc import Mapping

from sandboxes.models import Snapshot


def parent_chain(snapshot: Snapshot, by_pk: Mapping[int, Snapshot], *, limit: int = 50) -> list:
    """``snapshot``'s ancestors, nearest first, from the versions in ``by_pk``.

    A parent missing from ``by_pk`` (not visible to the team) ends the chain; so does a
    cycle, which the data model does not forbid.
    """
    chain: list[Snapshot] = []
    seen = {snapshot.pk}
    parent_id = snapshot.parent_id
    while parent_id is not None and parent_id not in seen and len(chain) < limit:
        parent = by_pk.get(parent_id)
        if parent is None:
            break
        chain.append(parent)
        seen.add(parent_id)
        parent_id = parent.parent_id
    return chain
