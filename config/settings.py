"""Settings, all from the environment, with safe local defaults (SQLite, the local provider).

Every variable is documented in docs/configuration.md; keep the two in step.
"""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from config import localfiles
from providers.registry import provider_config
from providers.settings import flag_setting, number_setting

BASE_DIR = Path(__file__).resolve().parent.parent
env = os.environ


def _checked(read, name: str, *args, **kwargs):
    # The parsing rules and messages are providers/settings.py's, shared with the
    # providers; a bad value stops the server at start with Django's own error.
    try:
        return read(env, name, *args, **kwargs)
    except ValueError as exc:
        raise ImproperlyConfigured(str(exc)) from None


def env_bool(name: str, default: bool = False) -> bool:
    return _checked(flag_setting, name, default)


def env_int(name: str, default: int) -> int:
    return int(_checked(number_setting, name, default, whole=True))


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env.get(name, "").strip().lower() or default
    if value not in choices:
        raise ImproperlyConfigured(f"{name}={value!r}: choose one of {', '.join(choices)}")
    return value


def env_seconds(name: str, default: int) -> int:
    return int(_checked(number_setting, name, default, low=0, whole=True))


def env_float(name: str, default: float) -> float:
    return _checked(number_setting, name, default)


def env_list(name: str, default: str = "") -> list[str]:
    return [item.strip() for item in env.get(name, default).split(",") if item.strip()]


DEBUG = env_bool("DEBUG")
# Set by `manage.py serve` (`make run`) for itself and the processes it starts: the
# single-machine setup, on plain HTTP at 127.0.0.1 (see SECRET_KEY and HTTPS below).
EMBEDDED = env_bool("SANDBOXES_EMBEDDED")
DATA_DIR = Path(env.get("SANDBOXES_DATA_DIR") or BASE_DIR / ".data").resolve()
localfiles.private_dir(DATA_DIR)  # 0700: it holds the database and the secret key


def _secret_key() -> str:
    if env.get("SECRET_KEY"):
        return env["SECRET_KEY"]
    if not (DEBUG or EMBEDDED):
        raise ImproperlyConfigured(
            "SECRET_KEY must be set unless DEBUG=1 or under `manage.py serve` (make run)"
        )
    # One key per data dir (0600), generated on first use, so sessions survive restarts.
    path = DATA_DIR / "secret-key"
    legacy = DATA_DIR / "dev-secret-key"  # its name before `make run` left DEBUG off
    if legacy.exists() and not path.exists():
        legacy.rename(path)
    return localfiles.persisted_secret(path)


SECRET_KEY = _secret_key()


def _secret_keys() -> list[str]:
    """Fernet keys for team secrets: the first encrypts, every one decrypts (rotation)."""
    keys = env_list("SANDBOX_SECRET_KEYS")
    if keys or not (DEBUG or EMBEDDED):
        return keys  # none: team secrets are refused until an operator sets some
    return [localfiles.persisted_fernet_key(DATA_DIR / "secrets-key")]


SANDBOX_SECRET_KEYS = _secret_keys()
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", "127.0.0.1,localhost")
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS")

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "django_htmx",
    "django_filters",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "django_q",
    "axes",  # login throttling: see "Login throttling" below
    "sandboxes",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "sandboxes.static_files.StaticFilesMiddleware",  # WhiteNoise, streaming under ASGI
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_htmx.middleware.HtmxMiddleware",
    # Last: turns a lockout found during authentication into the lockout page.
    "axes.middleware.AxesMiddleware",
]

ROOT_URLCONF = "config.urls"
WSGI_APPLICATION = "config.wsgi.application"
# What `manage.py serve` and production serve (uvicorn): each request gets a thread of its
# own, so a long call (exec, ?wait, the proxy) never holds a worker other requests need.
ASGI_APPLICATION = "config.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
                "sandboxes.context_processors.team",
            ],
        },
    },
]


def _database() -> dict:
    url = env.get("DATABASE_URL") or f"sqlite:///{DATA_DIR / 'db.sqlite3'}"
    # 0: a connection per request. Under ASGI every request runs in a thread of its own,
    # and a persistent connection would stay behind with each finished thread until the
    # database refuses new ones (Django's advice: no persistent connections under ASGI).
    # Only used without the pool (below): the pool is how connections are reused.
    config = dj_database_url.parse(url, conn_max_age=env_int("DB_CONN_MAX_AGE", 0))
    if config["ENGINE"] == "django.db.backends.sqlite3":
        if config["NAME"] and config["NAME"] != ":memory:":
            localfiles.private_sqlite(Path(config["NAME"]))  # 0600: it holds the sessions
        config["CONN_MAX_AGE"] = 0
        # IMMEDIATE takes the write lock at BEGIN, so a quota check and the insert it
        # guards cannot interleave with another writer (SQLite has no SELECT FOR UPDATE).
        config["OPTIONS"] = {
            "transaction_mode": "IMMEDIATE",
            "timeout": 20,
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        }
    else:
        config["CONN_HEALTH_CHECKS"] = True  # with the pool: checked as it is handed out
        pool = _database_pool()
        if pool:
            # A request borrows a connection and gives it back at its end (opening one is
            # a PostgreSQL backend started, several ms); Django refuses a pool together
            # with persistent connections, which the pool replaces.
            config["CONN_MAX_AGE"] = 0
            config.setdefault("OPTIONS", {})["pool"] = pool
    return config


def _database_pool() -> dict | None:
    """psycopg_pool's options for each process's pool of PostgreSQL connections (None: no
    pool). Long calls give their connection back while they wait on a sandbox
    (sandboxes/services/long_calls.py), so a request holds one only while it queries."""
    max_size = env_int("DB_POOL_MAX_SIZE", 10)
    if max_size <= 0:
        return None
    return {
        "min_size": max(0, min(env_int("DB_POOL_MIN_SIZE", 2), max_size)),
        "max_size": max_size,
        # A query finding every connection busy waits this long for one, then fails.
        "timeout": max(1, env_seconds("DB_POOL_TIMEOUT", 10)),
        # Connections idle this long are closed, down to min_size.
        "max_idle": 300,
    }


DATABASES = {"default": _database()}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = env.get("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = DATA_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}
WHITENOISE_USE_FINDERS = DEBUG

LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

# --- Security: strict unless DEBUG (behind a TLS-terminating proxy, set
# SECURE_PROXY_SSL_HEADER_NAME so Django knows the request was HTTPS). Under `manage.py
# serve` (make run, plain HTTP on 127.0.0.1) the HTTPS-only ones default off instead.
SESSION_COOKIE_HTTPONLY = True
CSRF_COOKIE_HTTPONLY = False  # HTMX reads the token from the cookie-less meta tag instead
SECURE_CONTENT_TYPE_NOSNIFF = True
X_FRAME_OPTIONS = "DENY"
SECURE_REFERRER_POLICY = "same-origin"
if not DEBUG:
    https_only = not EMBEDDED
    SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", https_only)
    CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", https_only)
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", https_only)
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31536000 if https_only else 0)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", True)
    SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
    # Preloading is a commitment for the whole domain; it stays the operator's choice.
    SILENCED_SYSTEM_CHECKS = [] if SECURE_HSTS_PRELOAD else ["security.W021"]
if env.get("SECURE_PROXY_SSL_HEADER_NAME"):
    SECURE_PROXY_SSL_HEADER = (env["SECURE_PROXY_SSL_HEADER_NAME"], "https")

# --- Sandboxes
# Provider settings are read by providers/registry.py from this mapping. It holds only
# SANDBOX_PROVIDERS, SANDBOX_PROVIDER and the variables the providers declare they read
# (each Provider class's config_keys), so nothing else of the environment leaks in and a
# new provider's variables arrive without a change here. Filtered when first read, so a
# provider registered after this module ran (tests) still gets its keys. Below the
# environment: DATA_DIR/provider-settings.env (what migrations carried over from the
# database, see docs/configuration.md), then the built-in defaults.
SANDBOX_PROVIDER_CONFIG = provider_config(
    env,
    defaults={
        "LOCAL_SANDBOX_ROOT": str(DATA_DIR / "local-sandboxes"),
        **localfiles.provider_settings(DATA_DIR / localfiles.PROVIDER_SETTINGS_FILE),
    },
)

# Quotas for a team that has none of its own (0 = unlimited).
SANDBOX_TEAM_MAX_SANDBOXES = env_int("SANDBOX_TEAM_MAX_SANDBOXES", 20)
SANDBOX_TEAM_MAX_VCPUS = env_int("SANDBOX_TEAM_MAX_VCPUS", 64)
SANDBOX_TEAM_MAX_MEMORY_MB = env_int("SANDBOX_TEAM_MAX_MEMORY_MB", 131072)
# How long a worker may hold a sandbox operation before another may take it over.
SANDBOX_OPERATION_LEASE_SECONDS = env_int("SANDBOX_OPERATION_LEASE_SECONDS", 900)

# --- Background work (docs/configuration.md, "Background work").
# How often the sweep (TTL, failed starts, idle, reconciliation, orphans) and the snapshot
# retention run; django-q2 schedules have a granularity of one minute.
SANDBOX_SWEEP_MINUTES = max(1, env_int("SANDBOX_SWEEP_MINUTES", 1))
SANDBOX_RETENTION_MINUTES = max(1, env_int("SANDBOX_RETENTION_MINUTES", 60))
# At most this many actions per kind (TTL, idle, stuck, drift, failed, orphans) per sweep.
SANDBOX_SWEEP_BATCH = max(1, env_int("SANDBOX_SWEEP_BATCH", 50))
SANDBOX_STUCK_SECONDS = env_seconds("SANDBOX_STUCK_SECONDS", 300)
# Warm pools (docs/pools.md): how often every pool is topped up, drained and recycled
# (a claim also refills its own pool at once), and how many members one refill makes at once.
SANDBOX_POOL_MINUTES = max(1, env_int("SANDBOX_POOL_MINUTES", 1))
SANDBOX_POOL_FILL_PARALLEL = max(1, env_int("SANDBOX_POOL_FILL_PARALLEL", 4))
# The largest maximum a pool may be given (its budget of members).
SANDBOX_POOL_MAX_MEMBERS = max(1, env_int("SANDBOX_POOL_MAX_MEMBERS", 50))
# Lifecycle defaults for teams without their own (cmux's: park after 20 h idle, delete
# after 14 days stopped or paused); 0 = never. Fixed on each sandbox at create.
SANDBOX_DEFAULT_IDLE_TIMEOUT_SECONDS = env_seconds("SANDBOX_DEFAULT_IDLE_TIMEOUT_SECONDS", 72000)
SANDBOX_DEFAULT_DELETE_PARKED_SECONDS = env_seconds(
    "SANDBOX_DEFAULT_DELETE_PARKED_SECONDS", 14 * 86400
)
# `manage.py worker` sends its cluster a heartbeat task this often, and restarts a cluster
# that ran none for WORKER_STALL_SECONDS while some of its worker processes were idle.
WORKER_HEARTBEAT_SECONDS = max(1, env_int("WORKER_HEARTBEAT_SECONDS", 10))
WORKER_STALL_SECONDS = max(2, env_int("WORKER_STALL_SECONDS", 60))
SANDBOX_RECONCILE_MAX_ATTEMPTS = max(1, env_int("SANDBOX_RECONCILE_MAX_ATTEMPTS", 5))
# A provider CPU sample at or above this (in vCPUs) counts as activity for idle detection.
SANDBOX_IDLE_CPU_FRACTION = env_float("SANDBOX_IDLE_CPU_FRACTION", 0.25)
SANDBOX_FAILED_GRACE_SECONDS = env_seconds("SANDBOX_FAILED_GRACE_SECONDS", 3600)
SANDBOX_ORPHAN_POLICY = env_choice("SANDBOX_ORPHAN_POLICY", "delete", ("delete", "adopt", "keep"))
SANDBOX_ORPHAN_GRACE_SECONDS = env_seconds("SANDBOX_ORPHAN_GRACE_SECONDS", 900)
# Versions kept per (team or shared, provider, preset); 0 keeps every version.
SNAPSHOT_RETENTION = env_seconds("SNAPSHOT_RETENTION", 10)
# Wake-on-HTTP through the control plane's proxy: how long a request waits for the resume.
SANDBOX_WAKE_TIMEOUT_SECONDS = max(1, env_int("SANDBOX_WAKE_TIMEOUT_SECONDS", 60))
SANDBOX_PROXY_TIMEOUT_SECONDS = max(1, env_int("SANDBOX_PROXY_TIMEOUT_SECONDS", 120))
# Serve proxied pages in an opaque origin (CSP sandbox) so they cannot act as the dashboard.
SANDBOX_PROXY_ISOLATE = env_bool("SANDBOX_PROXY_ISOLATE", True)
# Preview URLs (sandboxes/preview.py): each exposed service is its own origin,
# <port>-<sandbox id>.SANDBOX_PREVIEW_DOMAIN, routed by Host before Django. The default
# `localhost` needs no DNS (browsers resolve *.localhost to loopback); production needs a
# wildcard DNS record and certificate (docs/operations.md). Scheme and port: those of the
# URL the browser uses ("" and 0: the dashboard request's own). A browser gets in with a
# signed token valid SANDBOX_PREVIEW_TOKEN_SECONDS, exchanged for a cookie of that host
# only, valid SANDBOX_PREVIEW_SESSION_SECONDS.
SANDBOX_PREVIEW_DOMAIN = env.get("SANDBOX_PREVIEW_DOMAIN", "localhost").strip().strip(".").lower()
SANDBOX_PREVIEW_SCHEME = env_choice("SANDBOX_PREVIEW_SCHEME", "", ("", "http", "https"))
SANDBOX_PREVIEW_PORT = max(0, min(65535, env_int("SANDBOX_PREVIEW_PORT", 0)))
# Where a browser without access to a preview is sent to sign in: the dashboard's URL
# ("": SANDBOX_PREVIEW_DOMAIN itself, on the preview's scheme and port, as under make run).
SANDBOX_PREVIEW_DASHBOARD_URL = env.get("SANDBOX_PREVIEW_DASHBOARD_URL", "").strip().rstrip("/")
SANDBOX_PREVIEW_TOKEN_SECONDS = max(5, env_int("SANDBOX_PREVIEW_TOKEN_SECONDS", 60))
SANDBOX_PREVIEW_SESSION_SECONDS = max(60, env_int("SANDBOX_PREVIEW_SESSION_SECONDS", 8 * 3600))
# The dashboard's cookies are host-only: a Domain would send the session to preview hosts.
SESSION_COOKIE_DOMAIN = None
CSRF_COOKIE_DOMAIN = None
# Long calls (exec, ?wait, the service proxy and its wake) hold a thread and a database
# connection while they wait: at most this many at once per team, and on the whole site,
# counted where the API's rate counters are (sandboxes/services/long_calls.py). Beyond
# them: 429 with Retry-After. 0 switches a cap off.
SANDBOX_LONG_CALLS_PER_TEAM = max(0, env_int("SANDBOX_LONG_CALLS_PER_TEAM", 4))
SANDBOX_LONG_CALLS_TOTAL = max(0, env_int("SANDBOX_LONG_CALLS_TOTAL", 32))
# The web terminal (sandboxes/services/terminal_hub.py): a session whose browser went away
# (a reload, a dropped connection) stays open this long for it to come back, replaying
# the last SANDBOX_TERMINAL_SCROLLBACK_BYTES of output; at most
# SANDBOX_TERMINAL_MAX_SESSIONS open per user and web process (each is a thread, a pty).
SANDBOX_TERMINAL_DETACH_SECONDS = max(0, env_int("SANDBOX_TERMINAL_DETACH_SECONDS", 300))
SANDBOX_TERMINAL_SCROLLBACK_BYTES = max(
    4096, env_int("SANDBOX_TERMINAL_SCROLLBACK_BYTES", 256 * 1024)
)
SANDBOX_TERMINAL_MAX_SESSIONS = max(1, env_int("SANDBOX_TERMINAL_MAX_SESSIONS", 20))
# The SSH gateway (sandboxes/ssh_gateway.py, `manage.py ssh_gateway`, docs/ssh.md): where it
# listens, the host and port people are told to connect to ("" and 0: where it listens),
# how long a token from POST /api/v1/sandboxes/{id}/ssh lasts, and its host key (made
# once, 0600, when the file does not exist). `make run` starts it unless
# SANDBOX_SSH_GATEWAY is off.
SANDBOX_SSH_GATEWAY = env_bool("SANDBOX_SSH_GATEWAY", True)
SANDBOX_SSH_HOST = env.get("SANDBOX_SSH_HOST", "127.0.0.1").strip() or "127.0.0.1"
SANDBOX_SSH_PORT = max(1, min(65535, env_int("SANDBOX_SSH_PORT", 2222)))
SANDBOX_SSH_PUBLIC_HOST = env.get("SANDBOX_SSH_PUBLIC_HOST", "").strip()
SANDBOX_SSH_PUBLIC_PORT = max(0, min(65535, env_int("SANDBOX_SSH_PUBLIC_PORT", 0)))
SANDBOX_SSH_TOKEN_SECONDS = max(10, env_int("SANDBOX_SSH_TOKEN_SECONDS", 300))
SANDBOX_SSH_HOST_KEY = Path(env.get("SANDBOX_SSH_HOST_KEY") or DATA_DIR / "ssh_host_ed25519_key")
# Images (sandboxes/services/images.py, docs/images.md): the Debian mirror builds use, where
# downloaded packages and built root filesystems are cached, what `make run` builds for
# the local provider on first start ("debian", "debian:SUITE", or "off"), and how much
# of a build's log is kept (its tail).
SANDBOX_DEBIAN_MIRROR = env.get("SANDBOX_DEBIAN_MIRROR") or "http://deb.debian.org/debian"
SANDBOX_IMAGE_CACHE_DIR = Path(env.get("SANDBOX_IMAGE_CACHE_DIR") or DATA_DIR / "image-cache")
SANDBOX_DEFAULT_IMAGE = (env.get("SANDBOX_DEFAULT_IMAGE") or "debian").strip()
SANDBOX_IMAGE_LOG_BYTES = max(1024, env_int("SANDBOX_IMAGE_LOG_BYTES", 64 * 1024))

# --- The API's per-team request counters (sandboxes/services/throttling.py) must be
# shared by every web worker: in Redis when REDIS_URL is set, else in the database.
SANDBOX_API_THROTTLE_STORE = "redis" if env.get("REDIS_URL") else "database"
if env.get("REDIS_URL"):
    CACHES = {
        "default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"},
        "throttle": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": env["REDIS_URL"],
            "KEY_PREFIX": "sandboxes",
            # One pool per process: Django's own would make one (and a new connection)
            # per request under ASGI, where each request runs in a new thread.
            "OPTIONS": {"pool_class": "sandboxes.redis_pool.SharedConnectionPool"},
        },
    }

# --- Login throttling (django-axes; docs/configuration.md, "Sign-in throttling").
# Failed sign-ins at /login/ and /admin/login/ are counted per (username, address) and
# per address; past a limit every sign-in from there is refused, the right password too,
# until the cool-off has passed since the last failure or an admin unlocks it.
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",  # first: refuses locked-out attempts
    "django.contrib.auth.backends.ModelBackend",
]
LOGIN_FAILURE_LIMIT = max(1, env_int("LOGIN_FAILURE_LIMIT", 10))
LOGIN_IP_FAILURE_LIMIT = max(1, env_int("LOGIN_IP_FAILURE_LIMIT", 50))
LOGIN_COOLOFF_MINUTES = env_seconds("LOGIN_COOLOFF_MINUTES", 15)
# The client's address: REMOTE_ADDR, or behind a reverse proxy the header it sets (the
# right-most address of it, the one the proxy added), e.g. HTTP_X_FORWARDED_FOR.
CLIENT_IP_HEADER = env.get("CLIENT_IP_HEADER", "").strip()
AXES_HANDLER = "sandboxes.lockout.LockoutHandler"  # the database, with the two limits
AXES_FAILURE_LIMIT = LOGIN_FAILURE_LIMIT
AXES_LOCKOUT_PARAMETERS = [["username", "ip_address"], "ip_address"]
# 0 minutes: locked until an admin unlocks (axes treats None as "no cool-off").
AXES_COOLOFF_TIME = timedelta(minutes=LOGIN_COOLOFF_MINUTES) if LOGIN_COOLOFF_MINUTES else None
# Attempts while locked out do not push the end of the lockout further away.
AXES_RESET_COOL_OFF_ON_FAILURE_DURING_LOCKOUT = False
AXES_HTTP_RESPONSE_CODE = 429
AXES_LOCKOUT_CALLABLE = "sandboxes.lockout.lockout_response"
AXES_CLIENT_IP_CALLABLE = "sandboxes.services.auth_failures.client_ip"
# Failed API token authentications per client address (sandboxes/api/auth.py), counted
# like the API's rates; past the limit the API answers 429 without looking at the token.
SANDBOX_API_AUTH_FAILURE_RATE = env.get("SANDBOX_API_AUTH_FAILURE_RATE", "30/hour")

# --- The REST API (sandboxes/api, docs/api.md)
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "sandboxes.api.auth.BearerTokenAuthentication",
        "sandboxes.api.auth.TeamSessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["sandboxes.api.permissions.TeamMember"],
    "DEFAULT_THROTTLE_CLASSES": [
        "sandboxes.api.throttles.TeamRateThrottle",
        "sandboxes.api.throttles.TeamCreateThrottle",
    ],
    # Per team; "" switches a limit off. Creates count against team_create only.
    "DEFAULT_THROTTLE_RATES": {
        "team": env.get("SANDBOX_API_RATE", "1200/min"),
        "team_create": env.get("SANDBOX_API_CREATE_RATE", "60/min"),
    },
    "DEFAULT_PARSER_CLASSES": ["sandboxes.api.parsers.JSONParser"],
    "DEFAULT_RENDERER_CLASSES": ["rest_framework.renderers.JSONRenderer"],
    "DEFAULT_FILTER_BACKENDS": ["sandboxes.api.filtering.FilterBackend"],
    # OPTIONS answers 405: the OpenAPI schema is the description of the API.
    "DEFAULT_METADATA_CLASS": None,
    "DEFAULT_PAGINATION_CLASS": "sandboxes.api.pagination.Pagination",
    "PAGE_SIZE": 50,
    "EXCEPTION_HANDLER": "sandboxes.api.errors.exception_handler",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Sandboxes API",
    "DESCRIPTION": (
        "Start, pause, resume, snapshot and exec into sandboxes. Authenticate with "
        "`Authorization: Bearer <token>`. Every error is "
        '`{"error": {"code", "message", "fields"}}`; see docs/api.md.'
    ),
    "VERSION": "1",
    # 3.1: JSON Schema proper (metadata keys are described with propertyNames).
    "OAS_VERSION": "3.1.0",
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    "COMPONENT_SPLIT_REQUEST": True,
    "SCHEMA_PATH_PREFIX": r"/api/(?:v1/)?",
    # One name for the outbound network modes (create's network_policy, a sandbox's network).
    "ENUM_NAME_OVERRIDES": {"NetworkModeEnum": "sandboxes.models.NetworkMode"},
    # The docs page serves Swagger UI and Redoc from the sidecar package: no CDN.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    "POSTPROCESSING_HOOKS": [
        "drf_spectacular.hooks.postprocess_schema_enums",
        "sandboxes.api.schema.add_error_responses",
    ],
}

# --- django-q2: the ORM broker by default; Redis when REDIS_URL is set.
Q_CLUSTER = {
    "name": "sandboxes",
    "workers": env_int("Q_WORKERS", 2),
    "timeout": env_int("Q_TIMEOUT", 1800),
    "retry": env_int("Q_TIMEOUT", 1800) + 60,
    "max_attempts": 1,
    "catch_up": False,
    "ack_failures": True,
    "save_limit": 1000,
    "label": "Tasks",
    "sync": env_bool("Q_SYNC", False),
}
if env.get("REDIS_URL"):
    Q_CLUSTER["redis"] = env["REDIS_URL"]
else:
    Q_CLUSTER["orm"] = "default"
    Q_CLUSTER["poll"] = 0.2

# --- Logging: to stdout; never log request bodies (they can hold tokens).
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "filters": {"quiet_heartbeats": {"()": "sandboxes.logfilters.QuietHeartbeats"}},
    "handlers": {
        "console": {
            "class": "logging.StreamHandler",
            "formatter": "plain",
            "filters": ["quiet_heartbeats"],
        }
    },
    "root": {"handlers": ["console"], "level": env.get("LOG_LEVEL", "INFO")},
    "loggers": {"django.db.backends": {"level": "WARNING"}},
}
