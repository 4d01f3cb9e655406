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
* Each provider's own variables: exactly the names its class declares in
  ``config_keys``. ``provider_config`` keeps those (and the two above) and nothing else of
  the environment, so a new provider's settings arrive with no change outside its module.
"""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from providers.base import Provider

BUILTIN_PROVIDERS: dict[str, str] = {
    "local": "providers.local:LocalProvider",
    "morph": "providers.morph:MorphProvider",
    "docker": "providers.docker_provider:DockerProvider",
    "pve-lxc": "providers.pve:PveLxcProvider",
    "pve-vm": "providers.pve:PveVmProvider",
    "aws-ec2": "providers.aws_ec2:AwsEc2Provider",
}

#: Providers registered at run time (the test suite's in-memory provider). Never offered
#: to users unless a setting names them.
_registered: dict[str, Callable[[], type[Provider]]] = {}

#: Bumped whenever ``_registered`` changes, so a ``ProviderConfig`` made before a
#: registration filters again and the new provider's keys reach it.
_generation = 0

#: The settings every configuration carries whatever the providers.
REGISTRY_KEYS: tuple[str, ...] = ("SANDBOX_PROVIDERS", "SANDBOX_PROVIDER")

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
    global _generation
    _registered[name] = loader
    _generation += 1


def unregister_provider(name: str) -> None:
    global _generation
    _registered.pop(name, None)
    _generation += 1


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


def config_keys() -> tuple[str, ...]:
    """Every setting a provider may receive: ``SANDBOX_PROVIDERS``, ``SANDBOX_PROVIDER`` and
    the union of the ``config_keys`` of every known provider (built in or registered).

    A provider whose module cannot be imported (its SDK is not installed) contributes
    nothing; it could not be built either, and ``build_providers`` says why by name."""
    keys = list(REGISTRY_KEYS)
    for name in known_provider_names():
        try:
            cls = provider_class(name)
        except ImportError:
            continue
        keys.extend(getattr(cls, "config_keys", ()))
    return tuple(dict.fromkeys(keys))


class ProviderConfig(Mapping[str, str]):
    """The providers' settings out of ``environ``: only the keys of ``config_keys()``, plus
    ``defaults`` for those unset.

    Filtered when first read rather than when made: Django's settings make one at import,
    before anything registers a provider at run time (the test providers in a worker's
    settings module), and it filters again after any registration so that provider's
    keys arrive too. Reading it imports the known providers' modules (not their SDKs)."""

    def __init__(self, environ: Mapping[str, str], defaults: Mapping[str, str] | None = None):
        self._environ = dict(environ)
        self._defaults = dict(defaults or {})
        self._lock = threading.Lock()
        self._filtered: tuple[int, dict[str, str]] | None = None

    def _data(self) -> dict[str, str]:
        with self._lock:
            if self._filtered is None or self._filtered[0] != _generation:
                keys = config_keys()
                data = {k: v for k, v in self._defaults.items() if k in keys}
                data.update({k: self._environ[k] for k in keys if k in self._environ})
                self._filtered = (_generation, data)
            return self._filtered[1]

    def __getitem__(self, key: str) -> str:
        return self._data()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._data())

    def __len__(self) -> int:
        return len(self._data())

    def __repr__(self) -> str:
        return f"ProviderConfig({sorted(self._data())})"  # names only: values hold secrets


def provider_config(
    environ: Mapping[str, str], defaults: Mapping[str, str] | None = None
) -> ProviderConfig:
    """What config/settings.py passes providers: see ``ProviderConfig``."""
    return ProviderConfig(environ, defaults)


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
        if name in names:
            continue
        try:
            cls = provider_class(name)
        except ImportError:
            continue  # its SDK is not installed: not switched on unless named explicitly
        if cls.configured(config):
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
