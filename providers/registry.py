"""Which providers exist, which are switched on, and building them from settings.

Adding a provider means one line in ``BUILTIN_PROVIDERS`` (name -> "module:Class"); the
class is imported only when the provider is used, so an SDK that is not installed only
matters to people who switch that provider on.

Settings (a mapping, normally the environment):

* ``SANDBOX_PROVIDERS``: comma-separated names of the enabled providers. When unset:
  ``local`` plus every provider whose own settings are present (``PVE_API_URL`` and
  ``PVE_API_TOKEN`` switch on ``pve-lxc`` and ``pve-vm``, ``MORPH_API_KEY`` switches on
  ``morph``, ``DOCKER_HOST`` switches on ``docker``).
* ``SANDBOX_PROVIDER``: the default for new sandboxes; must be enabled. When unset, the
  first enabled provider.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.base import Provider

BUILTIN_PROVIDERS: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "morph": "providers.morph:MorphProvider",
    "docker": "providers.docker_provider:DockerProvider",
    "pve-lxc": "providers.pve:PveLxcProvider",
    "pve-vm": "providers.pve:PveVmProvider",
}

#: Providers registered at run time (the test suite's in-memory provider). Never offered
#: to users unless a setting names them.
_registered: dict[str, Callable[[], type[Provider]]] = {}

_NAME_RE = re.compile(r"[a-z][a-z0-9]*(?:-[a-z0-9]+)*")


class ProviderConfigError(ValueError):
    """The provider settings are wrong; the message names the setting to fix."""


def provider_token(name: str) -> str:
    """How a provider is written inside snapshot ids: without dashes (``pvelxc``)."""
    return name.replace("-", "")


def known_provider_names() -> tuple[str, ...]:
    return tuple(BUILTIN_PROVIDERS) + tuple(n for n in _registered if n not in BUILTIN_PROVIDERS)


def register_provider(name: str, loader: Callable[[], type[Provider]]) -> None:
    """Make a provider known (tests use this for the in-memory provider)."""
    if not _NAME_RE.fullmatch(name):
        raise ProviderConfigError(f"{name!r} is not a valid provider name")
    clash = [n for n in known_provider_names() if provider_token(n) == provider_token(name)]
    if clash and clash != [name]:
        raise ProviderConfigError(f"{name!r} would write snapshot ids like {clash[0]!r}")
    _registered[name] = loader


def unregister_provider(name: str) -> None:
    _registered.pop(name, None)


def provider_class(name: str) -> type[Provider]:
    if name in _registered:
        return _registered[name]()
    target = BUILTIN_PROVIDERS.get(name)
    if target is None:
        raise ProviderConfigError(
            f"unknown provider {name!r} (known: {', '.join(known_provider_names()) or 'none'})"
        )
    module_name, _, class_name = target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def _split(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


def enabled_provider_names(config: Mapping[str, str]) -> list[str]:
    """The enabled providers, in order; raise ProviderConfigError for an unknown name."""
    explicit = config.get("SANDBOX_PROVIDERS", "").strip()
    if explicit:
        names = list(dict.fromkeys(_split(explicit)))
        unknown = [n for n in names if n not in known_provider_names()]
        if unknown:
            raise ProviderConfigError(
                f"SANDBOX_PROVIDERS names unknown provider(s) {', '.join(unknown)} "
                f"(known: {', '.join(known_provider_names())})"
            )
        return names
    names = ["local"] if "local" in BUILTIN_PROVIDERS else []
    for name in BUILTIN_PROVIDERS:
        if name not in names and provider_class(name).configured(config):
            names.append(name)
    return names


def default_provider_name(config: Mapping[str, str], enabled: list[str]) -> str | None:
    chosen = config.get("SANDBOX_PROVIDER", "").strip()
    if chosen:
        if chosen not in enabled:
            listed = ", ".join(enabled) or "none"
            raise ProviderConfigError(
                f"SANDBOX_PROVIDER={chosen} is not enabled (enabled: {listed})"
            )
        return chosen
    return enabled[0] if enabled else None


def build_providers(config: Mapping[str, str]) -> dict[str, Provider]:
    """Instantiate every enabled provider from ``config``."""
    built: dict[str, Provider] = {}
    for name in enabled_provider_names(config):
        try:
            built[name] = provider_class(name).from_config(config)
        except ProviderConfigError:
            raise
        except (ValueError, ImportError) as exc:
            raise ProviderConfigError(f"provider {name}: {exc}") from exc
    return built
