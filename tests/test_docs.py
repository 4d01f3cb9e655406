"""The README and docs/configuration.md name every environment variable the code reads."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: A call that reads a setting from the environment (or a provider's config mapping).
ENV_READ = re.compile(
    r'(?:env_\w+|env\.get|environ\.get|config\.get|_setting)\(\s*(?:config,\s*)?"([A-Z][A-Z0-9_]+)"'
)
#: Read for what they always mean, not as our settings; or set by the code itself for a
#: child process (the PVE sandbox agent's secret, passed into the guest).
NOT_SETTINGS = {"PATH", "HOME", "XDG_DATA_HOME", "SANDBOX_AGENT_SECRET"}


def variables_read() -> set[str]:
    names: set[str] = set()
    for folder in ("config", "providers", "sandboxes"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(ENV_READ.findall(path.read_text()))
    return names - NOT_SETTINGS


def test_the_scan_finds_the_settings_it_should():
    found = variables_read()
    assert {"DATABASE_URL", "PVE_API_TOKEN", "LOCAL_SANDBOX_ROOT", "SNAPSHOT_RETENTION"} <= found


def test_every_environment_variable_is_documented():
    readme = (ROOT / "README.md").read_text()
    configuration = "\n".join(
        p.read_text()
        for p in [ROOT / "docs" / "configuration.md", *(ROOT / "docs" / "providers").glob("*.md")]
    )
    missing_in_readme = sorted(n for n in variables_read() if f"`{n}`" not in readme)
    missing_in_docs = sorted(n for n in variables_read() if f"`{n}`" not in configuration)
    assert not missing_in_readme, f"add to README.md: {missing_in_readme}"
    assert not missing_in_docs, f"add to docs/configuration.md: {missing_in_docs}"
