"""Durations as people type them: ``90s``, ``15m``, ``2h``, ``1d``, ``1h30m`` or plain seconds."""

from __future__ import annotations

import re

UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_PART = re.compile(r"(\d+)\s*([dhms])")
_WHOLE = re.compile(r"(?:\d+\s*[dhms]\s*)+")


def parse_duration(text: str) -> int | None:
    """Seconds for ``text`` (blank means none); ValueError saying what is accepted."""
    text = (text or "").strip().lower()
    if not text:
        return None
    if text.isdigit():
        seconds = int(text)
    elif _WHOLE.fullmatch(text):
        seconds = sum(int(n) * UNITS[unit] for n, unit in _PART.findall(text))
    else:
        raise ValueError("write a duration like 90s, 15m, 2h, 1d or 1h30m (blank for none)")
    if seconds <= 0:
        raise ValueError("a duration must be longer than zero (blank for none)")
    return seconds


def format_duration(seconds: int | None) -> str:
    """The shortest spelling ``parse_duration`` reads back: 5400 -> ``1h30m``."""
    if not seconds:
        return ""
    parts = []
    for unit, size in UNITS.items():
        count, seconds = divmod(seconds, size)
        if count:
            parts.append(f"{count}{unit}")
    return "".join(parts)
