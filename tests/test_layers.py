"""The layer rules (pyproject.toml's import contracts) hold, and a violation fails them.

``make test`` runs ``lint-imports`` on the tree as it is; here each rule is also broken on
purpose, in a copy of the code, to show that the contracts would catch it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(root: Path) -> subprocess.CompletedProcess[str]:
    # PYTHONPATH first, so the copy under test is analysed rather than the installed tree.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", "--config", str(root / "pyproject.toml")],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_the_tree_keeps_every_contract():
    result = lint_imports(ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.fixture(scope="module")
def tree_copy(tmp_path_factory) -> Path:
    """The packages and pyproject.toml, copied (Python sources only)."""
    root = tmp_path_factory.mktemp("tree")
    ignore = shutil.ignore_patterns("__pycache__", "*.c", "*.pyc")
    for package in ("providers", "sandboxes", "config"):
        shutil.copytree(ROOT / package, root / package, ignore=ignore)
    shutil.copy(ROOT / "pyproject.toml", root / "pyproject.toml")
    return root


@pytest.mark.parametrize(
    ("module", "line", "contract"),
    [
        ("providers/base.py", "import django.conf", "providers/ is plain Python"),
        ("providers/errors.py", "import sandboxes.models", "providers/ is plain Python"),
        ("sandboxes/views/pages.py", "import providers.registry", "Only sandboxes.services"),
        ("sandboxes/api/views/site.py", "import providers.base", "Only sandboxes.services"),
        ("sandboxes/admin.py", "import providers.errors", "Only sandboxes.services"),
        ("sandboxes/tasks.py", "import providers.base", "Only sandboxes.services"),
        ("sandboxes/selectors.py", "import sandboxes.services.backends", "Callers above"),
        ("sandboxes/models.py", "import sandboxes.services.events", "Callers above"),
        ("sandboxes/services/teams.py", "import sandboxes.views.pages", "Callers above"),
    ],
)
def test_a_deliberate_violation_breaks_its_contract(tree_copy, module, line, contract):
    path = tree_copy / module
    original = path.read_text()
    path.write_text(original + f"\n{line}  # deliberate layer violation\n")
    try:
        result = lint_imports(tree_copy)
    finally:
        path.write_text(original)
    assert result.returncode != 0, result.stdout
    # "<name> BROKEN", perhaps followed by "(1 ignored import)".
    broken = [row for row in result.stdout.splitlines() if " BROKEN" in row]
    assert any(row.startswith(contract) for row in broken), result.stdout
