"""Settings for the test suite: the real settings with test-only defaults filled in.

Everything can still be overridden from the environment (CI points DATABASE_URL at
PostgreSQL). Tasks run synchronously in the test process unless a test starts workers.
"""

import os
from pathlib import Path

os.environ.setdefault("SECRET_KEY", "test-only-not-secret")
# A fixed Fernet key (tests only), so team secrets work in every test process.
os.environ.setdefault("SANDBOX_SECRET_KEYS", "dGVzdC1vbmx5LW5vdC1zZWNyZXQtMzItYnl0ZXMhISE=")
os.environ.setdefault(
    "SANDBOXES_DATA_DIR", str(Path(__file__).resolve().parent.parent / ".data" / "test")
)

from config.settings import *  # noqa: F403
from config.settings import Q_CLUSTER

ALLOWED_HOSTS = ["testserver", "127.0.0.1", "localhost"]
SECURE_SSL_REDIRECT = False
SESSION_COOKIE_SECURE = False
CSRF_COOKIE_SECURE = False
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]  # fast, tests only
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"  # noqa: F405
if DATABASES["default"]["ENGINE"].endswith("sqlite3"):  # noqa: F405
    # A file, not shared-cache memory: tests with threads need SQLite's real locking.
    DATABASES["default"]["TEST"] = {"NAME": str(DATA_DIR / "test-db.sqlite3")}  # noqa: F405
Q_CLUSTER["sync"] = os.environ.get("Q_SYNC", "1") == "1"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # noqa: F405 - whitenoise scans it at start
