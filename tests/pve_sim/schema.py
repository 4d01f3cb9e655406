"""Request validation against PVE's own API schema (``shared/pve-apidoc.json``).

The API viewer data is a tree of nodes (``path``, ``info`` {METHOD: {parameters, returns}},
``children``). A request is checked the way PVE's JSONSchema code checks it: the path
must match a node and the method must exist there (else 501 "Method ... not implemented",
which is what pveproxy answers), then every parameter (path, query and form values
together) must be declared, of the right type, within its bounds, enum, pattern and
format, and every required one present (else 400 "Parameter verification failed." with
one message per parameter in ``errors``).
"""

from __future__ import annotations

import gzip
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

#: PVE 9.2's API schema (the data PVE's own API viewer renders), vendored from the project's
#: shared/pve-apidoc.json so a clean checkout tests the same way; PVE_APIDOC overrides it.
APIDOC = Path(os.environ.get("PVE_APIDOC") or Path(__file__).with_name("pve-apidoc.json.gz"))

_INT = re.compile(r"-?\d+")
_NUMBER = re.compile(r"-?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
_TRUE = re.compile(r"(?i)1|on|yes|true")
_FALSE = re.compile(r"(?i)0|off|no|false")

#: Named string formats, as PVE's JSONSchema registers them (the ones a client of ours
#: may plausibly send; other named formats are accepted unchecked).
_TAG = r"[a-zA-Z0-9_][a-zA-Z0-9_\-+.]*"
NAMED_FORMATS: dict[str, re.Pattern[str]] = {
    "pve-node": re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"),
    "pve-vmid": re.compile(r"[1-9][0-9]{2,8}"),
    "pve-configid": re.compile(r"[a-zA-Z][a-zA-Z0-9_\-]+"),
    "pve-storage-id": re.compile(r"[a-zA-Z][a-zA-Z0-9\-_.]*[a-zA-Z0-9]"),
    "pve-poolid": re.compile(r"[A-Za-z0-9_\-]+"),
    "pve-tag-list": re.compile(rf"{_TAG}([;, ]+{_TAG})*[;, ]*"),
    "dns-name": re.compile(
        r"([a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?\.)*[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?"
    ),
    "pve-bridge-id": re.compile(r"[-_.\w\d]+"),
}


class ApiError(Exception):
    """An answer PVE gives instead of data: status, reason line and optional errors."""

    def __init__(self, status: int, message: str, errors: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.errors = dict(errors) if errors else None


@dataclass(frozen=True)
class Route:
    template: str  # /nodes/{node}/lxc/{vmid}/clone
    regex: re.Pattern[str]
    names: tuple[str, ...]
    info: Mapping[str, Any]  # METHOD -> method info


@dataclass(frozen=True)
class Matched:
    route: Route
    method: str
    #: Typed parameters (path + query + body), as PVE's handler receives them.
    params: dict[str, Any]


def _perl_regex(pattern: str) -> re.Pattern[str] | None:
    """PVE patterns are Perl regexes, matched as ``^pattern$``; translate the common bits."""
    text = pattern.replace("(?^:", "(?:").replace("(?^i:", "(?i:").replace("\\z", "$")
    text = text.replace("\\0", "\\x00")
    try:
        return re.compile(text)
    except re.error:
        return None


class Schema:
    def __init__(self, path: Path = APIDOC) -> None:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
        tree = json.loads(raw)
        self.routes: list[Route] = []
        self._walk(tree)
        # Literal segments win over placeholders (/nodes/{node}/tasks before {upid}).
        self.routes.sort(key=lambda r: (r.template.count("{"), -len(r.template)))

    def _walk(self, nodes: list[dict]) -> None:
        for node in nodes:
            template = node["path"]
            names = tuple(re.findall(r"\{([^}]+)\}", template))
            pattern = re.sub(r"\\\{[^}]+\\\}", "([^/]+)", re.escape(template))
            self.routes.append(Route(template, re.compile(pattern), names, node.get("info", {})))
            self._walk(node.get("children") or [])

    def match(self, method: str, path: str, values: Mapping[str, list[str]]) -> Matched:
        """Find the route and check ``values`` (raw strings, lists for repeated keys)."""
        path = path.rstrip("/") or "/"
        found = [(r, m) for r in self.routes if (m := r.regex.fullmatch(path))]
        for route, m in found:
            if method not in route.info:
                continue
            path_values = dict(zip(route.names, m.groups(), strict=True))
            return Matched(route, method, self._check(route.info[method], values, path_values))
        raise ApiError(501, f"Method '{method} {path}' not implemented")

    def _check(
        self, info: Mapping[str, Any], values: Mapping[str, list[str]], path_values: dict
    ) -> dict[str, Any]:
        spec = info.get("parameters") or {}
        props: dict[str, Any] = spec.get("properties") or {}
        errors: dict[str, str] = {}
        typed: dict[str, Any] = {}
        merged: dict[str, list[str]] = {k: list(v) for k, v in values.items()}
        for name, value in path_values.items():
            merged[name] = [value]
        for name, raw in merged.items():
            prop = _lookup(props, name)
            if prop is None:
                if spec.get("additionalProperties", 0):
                    typed[name] = raw[-1]
                    continue
                errors[name] = (
                    "property is not defined in schema and the schema does not allow "
                    "additional properties"
                )
                continue
            try:
                typed[name] = _value(prop, raw)
            except ValueError as exc:
                errors[name] = str(exc)
        for name, prop in props.items():
            if "[n]" in name or prop.get("optional"):
                continue
            if name not in merged:
                errors[name] = "property is missing and it is not optional"
        if errors:
            raise ApiError(400, "Parameter verification failed.", errors)
        return typed


def _lookup(props: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
    if name in props:
        return props[name]
    m = re.fullmatch(r"([a-z_\-]+?)(\d+)", name)
    if m:
        return props.get(f"{m.group(1)}[n]")
    return None


def _value(prop: Mapping[str, Any], raw: list[str]) -> Any:
    kind = prop.get("type", "string")
    if kind == "array":
        item = prop.get("items") or {"type": "string"}
        return [_scalar(item, v) for v in raw]
    if len(raw) != 1:
        raise ValueError("duplicate parameter (not an array)")
    return _scalar(prop, raw[0])


def _scalar(prop: Mapping[str, Any], value: str) -> Any:
    kind = prop.get("type", "string")
    if kind == "integer":
        if not _INT.fullmatch(value):
            raise ValueError(f"type check ('integer') failed - got '{value}'")
        number: Any = int(value)
        _bounds(prop, number)
        return number
    if kind == "number":
        if not _NUMBER.fullmatch(value):
            raise ValueError(f"type check ('number') failed - got '{value}'")
        number = float(value)
        _bounds(prop, number)
        return number
    if kind == "boolean":
        if _TRUE.fullmatch(value):
            return True
        if _FALSE.fullmatch(value):
            return False
        raise ValueError(f"type check ('boolean') failed - got '{value}'")
    if kind in ("string", "string-alike"):
        _string(prop, value)
        return value
    return value


def _bounds(prop: Mapping[str, Any], number: float) -> None:
    if "minimum" in prop and number < float(prop["minimum"]):
        raise ValueError(f"value must have a minimum value of {prop['minimum']}")
    if "maximum" in prop and number > float(prop["maximum"]):
        raise ValueError(f"value must have a maximum value of {prop['maximum']}")


def _string(prop: Mapping[str, Any], value: str) -> None:
    if "maxLength" in prop and len(value) > int(prop["maxLength"]):
        raise ValueError(f"value may only be {prop['maxLength']} characters long")
    if "minLength" in prop and len(value) < int(prop["minLength"]):
        raise ValueError(f"value must be at least {prop['minLength']} characters long")
    if "enum" in prop and value not in prop["enum"]:
        raise ValueError(
            f"value '{value}' does not have a value in the enumeration '{', '.join(prop['enum'])}'"
        )
    if "pattern" in prop:
        regex = _cached_regex(prop["pattern"])
        if regex is not None and not regex.fullmatch(value):
            raise ValueError("value does not match the regex pattern")
    fmt = prop.get("format")
    if isinstance(fmt, dict):
        _property_string(fmt, value)
    elif isinstance(fmt, str):
        named = NAMED_FORMATS.get(fmt)
        if named is not None and not named.fullmatch(value):
            raise ValueError(f"value does not look like a valid {fmt.removeprefix('pve-')}")


@cache
def _cached_regex(pattern: str) -> re.Pattern[str] | None:
    return _perl_regex(pattern)


def _property_string(fmt: Mapping[str, Any], value: str) -> None:
    """``key=value,key=value`` strings (rootfs, net0, agent ...), as PVE parses them."""
    default_key = next((k for k, v in fmt.items() if v.get("default_key")), None)
    seen: set[str] = set()
    for part in value.split(","):
        if not part:
            continue
        key, sep, item = part.partition("=")
        if not sep:
            if default_key is None or default_key in seen:
                raise ValueError(
                    f"invalid format - value without key, but schema has no default key: {part}"
                )
            key, item = default_key, part
        entry = fmt.get(key)
        if entry is None:
            raise ValueError(f"invalid format - unknown key '{key}'")
        if "keyAlias" in entry:  # virtio=MAC: model=virtio,macaddr=MAC
            seen.update({entry["keyAlias"], entry.get("alias", key)})
            continue
        if "alias" in entry:
            key, entry = entry["alias"], fmt[entry["alias"]]
        if key in seen:
            raise ValueError(f"invalid format - duplicate key '{key}'")
        seen.add(key)
        try:
            _scalar(entry, item)
        except ValueError as exc:
            raise ValueError(f"invalid format - {key}: {exc}") from None
    for key, entry in fmt.items():
        required = not entry.get("optional") and "alias" not in entry and "keyAlias" not in entry
        if required and "default" not in entry and key not in seen:
            raise ValueError(f"invalid format - {key}: property is missing and it is not optional")
