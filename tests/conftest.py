from __future__ import annotations

import pytest

from tests.system import skip_is_failure_here


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI=true a test skipped for a missing system component fails instead."""
    outcome = yield
    report = outcome.get_result()
    if report.skipped and skip_is_failure_here(str(report.longrepr)):
        report.outcome = "failed"
        report.longrepr = f"CI=true but a system component is missing: {report.longrepr}"
