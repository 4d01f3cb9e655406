"""static/vendor/ is what scripts/build-static makes from package-lock.json, unedited.

The vendored browser code (xterm.js) is committed so that ``make run`` needs no npm and no
network; these checks keep it honest without running npm: exact versions pinned in
package.json, the lock file agreeing, and every file as the manifest's SHA-256 says.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor"


def manifest() -> tuple[dict[str, str], dict[str, str]]:
    packages, files = {}, {}
    for line in (VENDOR / "MANIFEST").read_text().splitlines():
        if line.startswith("package "):
            _, name, version = line.split()
            packages[name] = version
        elif line and not line.startswith("#"):
            digest, path = line.split(maxsplit=1)
            files[path.removeprefix("./")] = digest
    return packages, files


def test_versions_are_pinned_exactly_and_the_lock_file_agrees():
    declared = json.loads((ROOT / "package.json").read_text())["devDependencies"]
    locked = json.loads((ROOT / "package-lock.json").read_text())["packages"]
    packages, _ = manifest()
    assert set(packages) == set(declared) == {"@xterm/xterm", "@xterm/addon-fit"}
    for name, version in declared.items():
        assert version[0].isdigit(), f"{name}: pin an exact version, not {version!r}"
        assert locked[f"node_modules/{name}"]["version"] == version
        assert locked[f"node_modules/{name}"]["integrity"].startswith("sha512-")
        assert packages[name] == version, "run scripts/build-static after changing versions"


def test_the_vendored_files_are_the_built_ones():
    _, files = manifest()
    found = [p for p in VENDOR.rglob("*") if p.is_file() and p.name != "MANIFEST"]
    on_disk = {str(p.relative_to(VENDOR)) for p in found}
    assert on_disk == set(files)
    for path, digest in files.items():
        assert hashlib.sha256((VENDOR / path).read_bytes()).hexdigest() == digest, path


def test_the_detail_page_loads_what_is_vendored():
    page = (ROOT / "templates" / "sandboxes" / "detail.html").read_text()
    for path in ("vendor/xterm/xterm.js", "vendor/xterm/addon-fit.js", "vendor/xterm/xterm.css"):
        assert f"'{path}'" in page
        assert (ROOT / "static" / path).is_file()
