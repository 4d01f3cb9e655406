"""Reading provider settings (environment variables) with one set of rules and messages.

Every provider reads its numbers and flags through these, so a bad value gets the same
clear error everywhere: the variable's name, what it holds, and what it must be.
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
    low: float,
    high: float,
    whole: bool = False,
) -> float:
    """``config[key]`` as a number in [low, high] (a whole number when ``whole``)."""
    raw = config.get(key, "").strip()
    if not raw:
        return default
    try:
        value = int(raw) if whole else float(raw)
    except ValueError:
        kind = "a whole number" if whole else "a number"
        raise ValueError(f"{key}={raw!r} is not {kind}") from None
    if not low <= value <= high:
        raise ValueError(f"{key}={raw} must be between {low:g} and {high:g}")
    return value


def int_setting(
    config: Mapping[str, str], key: str, default: int, *, low: int = 1, high: int
) -> int:
    return int(number_setting(config, key, default, low=low, high=high, whole=True))


def flag_setting(config: Mapping[str, str], key: str, default: bool = False) -> bool:
    raw = config.get(key, "").strip().lower()
    if not raw:
        return default
    if raw in TRUE_WORDS:
        return True
    if raw in FALSE_WORDS:
        return False
    raise ValueError(f"{key}={raw!r} must be 1 or 0")
