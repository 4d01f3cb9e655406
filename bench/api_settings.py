"""Settings for `python -m bench api`: the real settings, plus a bare JSON view to compare.

The bench sets DATABASE_URL (its own throwaway database) and SANDBOXES_DATA_DIR before
Django starts; everything else is the production configuration, except the things a
benchmark must not measure: HTTPS redirects, and throttling stopping the load.
"""

import os

os.environ.setdefault("SECRET_KEY", "bench-only-not-secret")
os.environ.setdefault("SECURE_SSL_REDIRECT", "0")
os.environ.setdefault("SANDBOX_API_RATE", "100000000/min")
os.environ.setdefault("SANDBOX_API_CREATE_RATE", "100000000/min")

from config.settings import *  # noqa: F403
from config.settings import LOGGING, STATIC_ROOT, STORAGES

ROOT_URLCONF = "bench.api_urls"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "testserver"]
STORAGES["staticfiles"]["BACKEND"] = "django.contrib.staticfiles.storage.StaticFilesStorage"
STATIC_ROOT.mkdir(parents=True, exist_ok=True)
LOGGING["root"]["level"] = "WARNING"
LOGGING["loggers"]["django.request"] = {"level": "ERROR"}
