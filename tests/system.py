"""Skipping tests whose system component (bubblewrap, dockerd, Chromium, PostgreSQL) is missing.

On a laptop such a test skips with one line saying what to install. Under ``CI=true`` the
skip is turned into a failure (see ``conftest.pytest_runtest_makereport``): CI installs
and starts every component, so a missing one there is a broken CI, not a reason to skip.
"""

from __future__ import annotations

import os

import pytest

MARK = "missing system component"


def require(component: str, available: bool, hint: str) -> None:
    """Skip the calling test unless ``available``; ``hint`` says how to get the component."""
    if not available:
        pytest.skip(f"{MARK} {component}: {hint}")


def skip_is_failure_here(reason: str) -> bool:
    return os.environ.get("CI", "").lower() == "true" and MARK in reason
