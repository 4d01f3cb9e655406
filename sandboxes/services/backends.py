"""The enabled providers, built once from settings.SANDBOX_PROVIDER_CONFIG, and the reads
that must ask them (capabilities, health, capacity).

Those reads are services rather than selectors because they call a provider: the views,
the API and the admin ask here and never hold a provider themselves. The value types they
answer with (``Capabilities``, ``Health``, ``Capacity``) are the providers' own, passed on.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from providers.base import Capabilities, Capacity, Health, Provider
from providers.errors import ProviderError
from providers.registry import build_providers, default_provider_name
from sandboxes.models import Preset
from sandboxes.services.errors import InvalidInput, ServiceError
from sandboxes.services.reservations import DbReservationStore


@dataclass(frozen=True)
class Backends:
    providers: dict[str, Provider]
    default: str | None


_lock = threading.Lock()
_built: Backends | None = None


def backends() -> Backends:
    global _built
    with _lock:
        if _built is None:
            config = settings.SANDBOX_PROVIDER_CONFIG
            providers = build_providers(config)
            for provider in providers.values():
                # Keys providers must claim across workers (PVE VMIDs) live in our database.
                provider.use_reservations(DbReservationStore())
            _built = Backends(providers, default_provider_name(config, list(providers)))
        return _built


@receiver(setting_changed)
def _forget_on_settings_change(*, setting: str, **kwargs) -> None:
    global _built
    if setting == "SANDBOX_PROVIDER_CONFIG":
        with _lock:
            _built = None


def reset() -> None:
    """Forget the built providers (tests; after the environment changed)."""
    global _built
    with _lock:
        _built = None


def get_provider(name: str) -> Provider:
    try:
        return backends().providers[name]
    except KeyError:
        enabled = ", ".join(backends().providers) or "none"
        raise InvalidInput(
            f"provider {name!r} is not enabled (enabled: {enabled})",
            fields={"provider": [f"not enabled; choose one of: {enabled}"]},
        ) from None


def enabled_provider_names() -> list[str]:
    return list(backends().providers)


def default_provider() -> str | None:
    return backends().default


def capabilities(name: str) -> Capabilities:
    return get_provider(name).capabilities


def preset_refusal(preset: Preset, provider: str) -> str:
    """Why ``preset`` is not offered on ``provider``; '' when it is.

    Every preset is offered on every provider, unless the preset names the providers it
    is restricted to (``Preset.providers``), or its size is beyond what the provider can
    make (``Capabilities.max_*``). A provider that is not enabled is not judged on size
    here: callers that need it enabled say so themselves."""
    if not preset.offered_on(provider):
        return f"preset {preset.pk} is offered only on {', '.join(preset.providers)}"
    try:
        found = capabilities(provider)
    except ServiceError:
        return ""
    refusal = found.size_refusal(
        vcpus=preset.vcpus, memory_mb=preset.memory_mb, disk_gb=preset.disk_gb
    )
    return f"preset {preset.pk} is not offered on {provider}: {refusal}" if refusal else ""


def offered_providers(preset: Preset, among: Iterable[str] | None = None) -> list[str]:
    """The enabled providers (or those of ``among``) ``preset`` is offered on, in order."""
    names = enabled_provider_names() if among is None else list(among)
    return [name for name in names if not preset_refusal(preset, name)]


def provider_capabilities(name: str) -> Capabilities:
    """What a provider can do; a provider switched off since a sandbox was made on it
    offers nothing, and every capability says so (where ``capabilities`` refuses)."""
    try:
        return capabilities(name)
    except ServiceError:
        reason = f"provider {name} is not enabled on this server"
        return Capabilities(reasons=dict.fromkeys(Capabilities.names(), reason))


def provider_capacity(name: str) -> Capacity | None:
    """What the provider can still hold; None when it does not say or cannot tell now.

    Raises InvalidInput when the provider is not enabled."""
    provider = get_provider(name)
    try:
        return provider.capacity()
    except (ProviderError, OSError):
        return None


def provider_health(name: str) -> Health:
    """Whether the provider answers (and how fast); a provider error is an answer too."""
    try:
        return get_provider(name).health()
    except ProviderError as exc:
        return Health(reachable=False, detail=exc.message)


@dataclass(frozen=True)
class ProviderState:
    """One enabled provider as the health page and ``/api/v1/health`` show it."""

    name: str
    health: Health
    capacity: Capacity | None


def _state(name: str) -> ProviderState:
    return ProviderState(name, provider_health(name), provider_capacity(name))


def provider_states() -> list[ProviderState]:
    """Health and capacity of every enabled provider, in the order they are enabled.

    Each check talks to a back end (and bounds its own wait); asking them all at once
    makes the answer as slow as the slowest one, not their sum. There is one provider per
    kind, a handful at most, so one thread each.
    """
    names = enabled_provider_names()
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        return list(pool.map(_state, names))
