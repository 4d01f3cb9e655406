"""Reading settings (environment variables) with one set of rules and messages.

Every provider reads its numbers and flags through these, and so does config/settings.py
(which turns the ``ValueError`` into Django's ``ImproperlyConfigured``), so a bad value
gets the same clear error everywhere: the variable's name, what it holds, and what it
must be. Plain Python, like the rest of providers/, so both sides can use it.
"""

from __future__ import annotations

from collections.abc import Mapping

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off"})


def number_setting(
    config: Mapping[str, str],
    key: str,
    default: float,
    *,
    low: float | None = None,
    high: float | None = None,
    whole: bool = False,
) -> float:
    """``config[key]`` as a number in [low, high] (a whole number when ``whole``); an
    unset or blank value is ``default``. A bound left out is no bound."""
    raw = config.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{key}={raw!r} is not {kind}") from None
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"{key}={raw} must be between {low:g} and {high:g}")
    if low is not None and value < low:
        raise ValueError(f"{key}={raw} must be {low:g} or more")
    if high is not None and value > high:
        raise ValueError(f"{key}={raw} must be {high:g} or less")
    return value


def int_setting(
    config: Mapping[str, str], key: str, default: int, *, low: int | None = 1, high: int | None
) -> int:
    return int(number_setting(config, key, default, low=low, high=high, whole=True))


def flag_setting(config: Mapping[str, str], key: str, default: bool = False) -> bool:
    """``config[key]`` as a flag: 1/true/yes/on or 0/false/no/off; unset or blank is
    ``default``."""
    raw = config.get(key, "").strip()
    if not raw:
        return default
    if raw.lower() in TRUE_WORDS:
        return True
    if raw.lower() in FALSE_WORDS:
        return False
    raise ValueError(f"{key}={raw!r} is not a boolean (use 1/0, true/false)")
