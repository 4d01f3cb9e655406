"""The enabled providers, built once from settings.SANDBOX_PROVIDER_CONFIG.

Only the service layer and the selectors use this module; everything else asks them.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

from providers.base import Capabilities, Capacity, Provider
from providers.errors import ProviderError
from providers.registry import build_providers, default_provider_name
from sandboxes.services.errors import InvalidInput
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


def provider_capacity(name: str) -> Capacity | None:
    """What the provider can still hold; None when it does not say or cannot tell now.

    Raises InvalidInput when the provider is not enabled."""
    provider = get_provider(name)
    try:
        return provider.capacity()
    except (ProviderError, OSError):
        return None
