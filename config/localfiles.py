"""Files of the data dir that only the control plane's user may read.

The data dir holds the SQLite database (sessions: whoever reads it can sign in as anyone)
and the persisted ``SECRET_KEY``. config/settings.py calls these at start, so every
process (``make run``, uvicorn, a worker) creates them private and tightens any left
readable by an earlier version. A path owned by another user is left as it is.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import os
import secrets
from pathlib import Path

from django.core.exceptions import ImproperlyConfigured

#: What SQLite keeps beside a database file (it gives them the database file's mode).
SQLITE_COMPANIONS = ("-wal", "-shm", "-journal")


def tighten(path: Path, mode: int) -> None:
    """Clear the permission bits of ``path`` beyond ``mode``."""
    with contextlib.suppress(FileNotFoundError, PermissionError):
        if os.stat(path).st_mode & 0o777 & ~mode:
            os.chmod(path, mode)


def private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    tighten(path, 0o700)


def private_sqlite(path: Path) -> None:
    """Create the database file 0600 before SQLite does (it would make it 0644); its
    -wal and -shm files take its mode."""
    with contextlib.suppress(OSError):  # a missing directory: SQLite will say so itself
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))
    for suffix in ("", *SQLITE_COMPANIONS):
        tighten(Path(f"{path}{suffix}"), 0o600)


def persisted_secret(path: Path) -> str:
    """The key stored at ``path``, generated (mode 0600) on first use.

    Written to a private temporary file and linked into place, so two processes starting
    at once agree on one key and nobody ever reads a half-written one.
    """
    if not path.exists():
        temporary = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(descriptor, "w") as file:
                file.write(secrets.token_urlsafe(50) + "\n")
                file.flush()
                os.fsync(file.fileno())
            with contextlib.suppress(FileExistsError):  # another process was first
                os.link(temporary, path)
        finally:
            temporary.unlink()
    tighten(path, 0o600)
    key = path.read_text().strip()
    if len(key) < 32:
        raise ImproperlyConfigured(f"{path} holds no usable SECRET_KEY: delete it or fix it")
    return key


def persisted_fernet_key(path: Path) -> str:
    """A Fernet key (urlsafe base64 of 32 bytes) for the embedded setup's team secrets,
    derived from a random key kept at ``path`` (0600, generated on first use): back the
    data dir up, or the secrets stored with it cannot be read again."""
    digest = hashlib.sha256(persisted_secret(path).encode()).digest()
    return base64.urlsafe_b64encode(digest).decode()


#: Provider settings the control plane keeps in its data dir: ``KEY=value`` lines, written
#: by migrations that moved a provider option out of the database (0018: a preset's "full
#: clone" box became ``PVE_FULL_CLONE_PRESETS``). The environment overrides each.
PROVIDER_SETTINGS_FILE = "provider-settings.env"


def provider_settings(path: Path) -> dict[str, str]:
    """The ``KEY=value`` lines of ``path`` (blank lines and ``#`` comments skipped); {}
    when there is no such file."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep or not key.strip():
            raise ImproperlyConfigured(f"{path}, line {number}: expected KEY=value")
        found[key.strip()] = value.strip()
    return found
