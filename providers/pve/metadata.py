"""What we write into a guest's PVE ``description`` and ``tags``, and how we read it back.

The description starts with a line for people looking at PVE's UI, then one marker line
(an HTML comment, which PVE's Markdown rendering hides) with JSON: the sandbox's
metadata (sandbox id, team, preset, snapshot id, so a lost database row can be rebuilt),
the exposed services, and what the guest is (a sandbox or a snapshot template).

Tags make our guests findable from ``/cluster/resources`` alone: ``sandboxes`` on every
guest we made, the sandbox id, and ``team-<slug>``. If someone edits the description in
PVE's UI and breaks the marker, the tags still say which sandbox the guest belongs to.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field

from providers.base import META_PRESET, META_SANDBOX_ID, META_TEAM, HttpService

MARKER_TAG = "sandboxes"
TEMPLATE_TAG = "sandboxes-template"
_MARKER = re.compile(r"<!-- sandboxes:v1 (\{.*?\}) -->", re.S)
_TAG_BAD = re.compile(r"[^a-z0-9_\-+.]")
DESCRIPTION_LIMIT = 8192


@dataclass
class GuestMeta:
    metadata: dict[str, str] = field(default_factory=dict)
    services: list[HttpService] = field(default_factory=list)
    kind: str = "sandbox"  # sandbox | template

    @property
    def sandbox_id(self) -> str:
        return self.metadata.get(META_SANDBOX_ID, "")

    def description(self) -> str:
        m = self.metadata
        if self.kind == "template":
            head = f"Snapshot template made by Sandboxes from {m.get(META_SANDBOX_ID, '?')}."
        else:
            head = (
                f"Sandbox {m.get(META_SANDBOX_ID, '?')} (team {m.get(META_TEAM, '?')}, "
                f"preset {m.get(META_PRESET, '?')}), managed by Sandboxes."
            )
        payload = {
            "kind": self.kind,
            "metadata": m,
            "services": [{"name": s.name, "port": s.port, "url": s.url} for s in self.services],
        }
        text = f"{head}\n\n<!-- sandboxes:v1 {json.dumps(payload, sort_keys=True)} -->\n"
        if len(text) > DESCRIPTION_LIMIT:
            raise ValueError("the sandbox's metadata does not fit PVE's 8 KiB description")
        return text

    def tags(self) -> str:
        if self.kind == "template":
            return f"{MARKER_TAG};{TEMPLATE_TAG}"
        parts = [MARKER_TAG, tag(self.sandbox_id)]
        if self.metadata.get(META_TEAM):
            parts.append(tag(f"team-{self.metadata[META_TEAM]}"))
        return ";".join(p for p in parts if p)


def tag(value: str) -> str:
    return _TAG_BAD.sub("_", value.lower()).lstrip("-+.")[:64]


def tag_list(tags: str | None) -> list[str]:
    return [t for t in re.split(r"[;, ]+", tags or "") if t]


def parse(description: str | None, tags: str | None = None) -> GuestMeta | None:
    """The marker in a description (or, if it was edited away, what the tags still say)."""
    match = _MARKER.search(description or "")
    if match:
        try:
            payload = json.loads(match.group(1))
            services = [
                HttpService(str(s["name"]), int(s["port"]), str(s["url"]))
                for s in payload.get("services", [])
            ]
            metadata = {str(k): str(v) for k, v in payload.get("metadata", {}).items()}
            return GuestMeta(metadata, services, str(payload.get("kind", "sandbox")))
        except (ValueError, KeyError, TypeError, AttributeError):
            pass
    listed = tag_list(tags)
    if MARKER_TAG in listed:
        if TEMPLATE_TAG in listed:
            return GuestMeta(kind="template")
        ids = [t for t in listed if t.startswith("sbx-")]
        if ids:
            return GuestMeta({META_SANDBOX_ID: ids[0]})
    return None


def has_marker_tag(row: dict) -> bool:
    return MARKER_TAG in tag_list(row.get("tags"))
