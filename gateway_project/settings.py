"""One settings module, driven by environment variables.

With no environment at all the gateway runs "embedded": SQLite under var/, a file
cache every worker process shares, Celery eager and the offline provider.
GATEWAY_ENV=production turns on production behaviour: every secret must come from
the environment and the process refuses to start without it.
"""

from __future__ import annotations

import os
import secrets
from pathlib import Path

import environ
from django.core.exceptions import ImproperlyConfigured

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = BASE_DIR / "var"
VAR_DIR.mkdir(exist_ok=True)
# Prometheus multiprocess mode: each worker process writes its own metric files here; /metrics
# merges them. Set before prometheus_client is imported anywhere.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(VAR_DIR / "prometheus"))
Path(os.environ["PROMETHEUS_MULTIPROC_DIR"]).mkdir(parents=True, exist_ok=True)

env = environ.Env()

GATEWAY_ENV = env.str("GATEWAY_ENV", default="embedded")
if GATEWAY_ENV not in {"embedded", "production"}:
    raise ImproperlyConfigured("GATEWAY_ENV must be 'embedded' or 'production'.")
PRODUCTION = GATEWAY_ENV == "production"


def _require(name: str) -> str:
    value = env.str(name, default="")
    if not value:
        raise ImproperlyConfigured(
            f"{name} must be set when GATEWAY_ENV=production (production secrets have no defaults)."
        )
    return value


def _embedded_secret_key() -> str:
    # Generated once and kept in var/ so sessions and JWTs survive restarts.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


if PRODUCTION:
    SECRET_KEY = _require("SECRET_KEY")
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=[])
    if not ALLOWED_HOSTS:
        raise ImproperlyConfigured("ALLOWED_HOSTS must be set when GATEWAY_ENV=production.")
    _require("DATABASE_URL")
    _require("REDIS_URL")
    DEBUG = env.bool("DEBUG", default=False)
else:
    SECRET_KEY = env.str("SECRET_KEY", default="") or _embedded_secret_key()
    ALLOWED_HOSTS = env.list("ALLOWED_HOSTS", default=["127.0.0.1", "localhost", "testserver"])
    DEBUG = env.bool("DEBUG", default=False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "catalog",
    "tenants",
    "metering",
    "llm",
    "adminconsole",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "gateway_project.urls"
WSGI_APPLICATION = "gateway_project.wsgi.application"
ASGI_APPLICATION = "gateway_project.asgi.application"

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
            ],
        },
    },
]

# --- Database -------------------------------------------------------------------
DATABASE_URL = env.str("DATABASE_URL", default="")
if DATABASE_URL:
    _db = env.db_url_config(DATABASE_URL)
    if _db["ENGINE"] in {"django.db.backends.postgresql", "django.db.backends.postgresql_psycopg2"}:
        # Django's PostgreSQL backend whose pool checks each connection it hands out (a socket
        # poll, no round trip): after an outage no request draws a dead pooled connection.
        _db["ENGINE"] = "gateway_project.postgresql"
        # Django's psycopg pool: connections are shared across requests, and since no
        # connection is held across a provider call, a small pool serves many calls.
        _db.setdefault("OPTIONS", {})["pool"] = {
            "min_size": env.int("DB_POOL_MIN_SIZE", default=1),
            "max_size": env.int("DB_POOL_MAX_SIZE", default=20),
            "timeout": env.int("DB_POOL_TIMEOUT", default=10),
            # A failed reconnection is retried with exponential backoff until this; past it the pool
            # gives up and reconnects on the next request instead. psycopg_pool's default (300 s) lets
            # the retry delay grow to minutes in a long outage: the pool then stays empty that long
            # after the database is back, and every request in between times out (a 503).
            "reconnect_timeout": env.float("DB_POOL_RECONNECT_TIMEOUT", default=2.0),
        }
        _db["CONN_MAX_AGE"] = 0
        # Django turns psycopg's prepared statements off (for PgBouncer in transaction mode). Its
        # own queries bind client-side and never prepare; the two hot-path function calls
        # (metering/meter_sql.py) bind server-side and are prepared on each pooled connection.
        # "off" for a pooler that cannot keep prepared statements (PgBouncer before 1.21).
        _prepare = env.str("DB_PREPARE_THRESHOLD", default="5")
        _db["OPTIONS"]["prepare_threshold"] = None if _prepare.lower() == "off" else int(_prepare)
    DATABASES = {"default": _db}
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": VAR_DIR / "gateway.sqlite3",
            "OPTIONS": {
                # Several worker processes write: WAL lets readers run beside a writer,
                # IMMEDIATE takes the write lock at BEGIN (no lock-upgrade deadlocks), and
                # the timeout makes a busy writer wait instead of "database is locked".
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
            },
        }
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
AUTH_USER_MODEL = "tenants.User"

# --- Cache (shared by every worker process) -----------------------------------------
REDIS_URL = env.str("REDIS_URL", default="")
if REDIS_URL:
    CACHES = {
        "default": {
            "BACKEND": "gateway_project.cache.RedisCache",  # Django's, with its redis client reused
            "LOCATION": REDIS_URL,
            "KEY_PREFIX": env.str("CACHE_KEY_PREFIX", default="gw"),
        }
    }
else:
    # A file cache, not local memory: a per-process cache would keep accepting a
    # revoked token or a suspended tenant in the other worker processes.
    CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
            "LOCATION": env.str("FILE_CACHE_DIR", default=str(VAR_DIR / "cache")),
        }
    }
IDENTITY_CACHE_SECONDS = env.int("IDENTITY_CACHE_SECONDS", default=60)
# External identity (optional): JWTs of the product's own identity service, mapped to users like
# the gateway's own tokens (tenants/external_jwt.py). Off unless an issuer and a key source are set.
EXTERNAL_JWT_ISSUER = env.str("EXTERNAL_JWT_ISSUER", default="")
EXTERNAL_JWT_AUDIENCE = env.str("EXTERNAL_JWT_AUDIENCE", default="")
EXTERNAL_JWT_JWKS_URL = env.str("EXTERNAL_JWT_JWKS_URL", default="")
EXTERNAL_JWT_HS256_SECRET = env.str("EXTERNAL_JWT_HS256_SECRET", default="")
EXTERNAL_JWT_JWKS_CACHE_SECONDS = env.int("EXTERNAL_JWT_JWKS_CACHE_SECONDS", default=300)
EXTERNAL_JWT_LEEWAY_SECONDS = env.int("EXTERNAL_JWT_LEEWAY_SECONDS", default=30)

# --- Celery ---------------------------------------------------------------------
CELERY_BROKER_URL = env.str("CELERY_BROKER_URL", default="") or REDIS_URL or "memory://"
CELERY_TASK_ALWAYS_EAGER = env.bool("CELERY_TASK_ALWAYS_EAGER", default=CELERY_BROKER_URL == "memory://")
CELERY_TASK_EAGER_PROPAGATES = True
CELERY_RESULT_BACKEND = None
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
from celery.schedules import crontab  # noqa: E402

CELERY_BEAT_SCHEDULE = {
    "expire-reservations": {"task": "metering.tasks.expire_reservations", "schedule": 30.0},
    "replay-usage-spool": {"task": "metering.tasks.replay_usage_spool", "schedule": 60.0},
    # Alert deliveries whose retry is due or whose message was lost (the claim prevents doubles).
    "retry-alert-deliveries": {"task": "metering.tasks.retry_alert_deliveries", "schedule": 60.0},
    # Yesterday's usage by task, one email per tenant with usage (UTC).
    "usage-digest": {"task": "metering.tasks.send_usage_digests",
                     "schedule": crontab(hour=env.int("USAGE_DIGEST_HOUR_UTC", default=6), minute=0)},
    "prune-notifications": {"task": "metering.tasks.prune_notifications", "schedule": crontab(hour=3, minute=30)},
}

# --- Email and alert delivery ---------------------------------------------------------
# With EMAIL_HOST set, mail goes out over SMTP; without it (the embedded default) it is printed
# to the console. EMAIL_BACKEND overrides either.
EMAIL_HOST = env.str("EMAIL_HOST", default="")
EMAIL_PORT = env.int("EMAIL_PORT", default=25)
EMAIL_HOST_USER = env.str("EMAIL_HOST_USER", default="")
EMAIL_HOST_PASSWORD = env.str("EMAIL_HOST_PASSWORD", default="")
EMAIL_USE_TLS = env.bool("EMAIL_USE_TLS", default=False)
EMAIL_USE_SSL = env.bool("EMAIL_USE_SSL", default=False)
EMAIL_TIMEOUT = env.int("EMAIL_TIMEOUT", default=10)
EMAIL_BACKEND = env.str("EMAIL_BACKEND", default="django.core.mail.backends.smtp.EmailBackend" if EMAIL_HOST
                        else "django.core.mail.backends.console.EmailBackend")
DEFAULT_FROM_EMAIL = env.str("DEFAULT_FROM_EMAIL", default="LLM Gateway <gateway@localhost>")
# A channel is disabled after this many failed attempts in a row (any success resets the count).
ALERT_CHANNEL_MAX_FAILURES = env.int("ALERT_CHANNEL_MAX_FAILURES", default=5)
ALERT_DELIVERY_MAX_ATTEMPTS = env.int("ALERT_DELIVERY_MAX_ATTEMPTS", default=8)
# Retry n waits base * 2**(n-1) seconds, at most the max.
ALERT_RETRY_BACKOFF_SECONDS = env.float("ALERT_RETRY_BACKOFF_SECONDS", default=30.0)
ALERT_RETRY_BACKOFF_MAX_SECONDS = env.float("ALERT_RETRY_BACKOFF_MAX_SECONDS", default=3600.0)
ALERT_HTTP_TIMEOUT_SECONDS = env.float("ALERT_HTTP_TIMEOUT_SECONDS", default=5.0)
ALERT_SENDING_LEASE_SECONDS = env.int("ALERT_SENDING_LEASE_SECONDS", default=300)
ALERT_PENDING_GRACE_SECONDS = env.int("ALERT_PENDING_GRACE_SECONDS", default=120)
# Webhook/Slack/Teams targets on loopback or private addresses (SSRF): refused in production.
ALERT_ALLOW_PRIVATE_TARGETS = env.bool("ALERT_ALLOW_PRIVATE_TARGETS", default=not PRODUCTION)
# Embedded mode (Celery eager): network deliveries run on a background thread, never in the request.
ALERT_EAGER_IN_BACKGROUND = env.bool("ALERT_EAGER_IN_BACKGROUND", default=True)
ALERT_EAGER_MAX_WAIT_SECONDS = env.float("ALERT_EAGER_MAX_WAIT_SECONDS", default=120.0)
NOTIFICATION_RETENTION_DAYS = env.int("NOTIFICATION_RETENTION_DAYS", default=90)
# The console's live panels (overview, tenant, provider health) poll their fragment this often.
CONSOLE_POLL_SECONDS = env.int("CONSOLE_POLL_SECONDS", default=10)

# --- Auth, DRF, JWT -------------------------------------------------------------
AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": ["tenants.authentication.TenantJWTAuthentication"],
    "DEFAULT_PERMISSION_CLASSES": ["tenants.permissions.IsTenantUser"],
    "EXCEPTION_HANDLER": "gateway_project.errors.exception_handler",
    # A strict JSON parser: deep nesting, lone surrogates, NULs and 1e400 are 400s, not 500s further in.
    "DEFAULT_PARSER_CLASSES": ["gateway_project.parsers.JSONParser", "gateway_project.parsers.FormParser",
                               "rest_framework.parsers.MultiPartParser"],
    "DEFAULT_SCHEMA_CLASS": "gateway_project.openapi.GatewayAutoSchema",
    "DEFAULT_PAGINATION_CLASS": "rest_framework.pagination.PageNumberPagination",
    "PAGE_SIZE": 50,
    "UNAUTHENTICATED_USER": None,
}

from datetime import timedelta  # noqa: E402

SIMPLE_JWT = {
    "ACCESS_TOKEN_LIFETIME": timedelta(minutes=env.int("JWT_ACCESS_MINUTES", default=30)),
    "REFRESH_TOKEN_LIFETIME": timedelta(days=env.int("JWT_REFRESH_DAYS", default=7)),
    "ALGORITHM": "HS256",
    "SIGNING_KEY": SECRET_KEY,
    "USER_ID_CLAIM": "sub",
    "USER_ID_FIELD": "id",
    "UPDATE_LAST_LOGIN": False,
}

# --- Sign-in protection (tenants/throttling.py) ---------------------------------------
# Only failures count: per username tried, and per client address for usernames that do not
# exist (signup: failed ATI secrets per address). LIMIT failures within WINDOW lock that username
# (or address) for LOCKOUT seconds (429 with Retry-After); a successful sign-in clears the count.
GATEWAY_LOGIN_FAILURE_LIMIT = env.int("GATEWAY_LOGIN_FAILURE_LIMIT", default=10)
GATEWAY_LOGIN_FAILURE_WINDOW_SECONDS = env.int("GATEWAY_LOGIN_FAILURE_WINDOW_SECONDS", default=300)
GATEWAY_LOGIN_LOCKOUT_SECONDS = env.int("GATEWAY_LOGIN_LOCKOUT_SECONDS", default=300)
# The client address is REMOTE_ADDR; behind N proxies of your own (load balancer, ingress) set N:
# the Nth address from the right of X-Forwarded-For is used, whatever a client put left of it.
GATEWAY_TRUSTED_PROXY_COUNT = env.int("GATEWAY_TRUSTED_PROXY_COUNT", default=0)

SPECTACULAR_SETTINGS = {
    "TITLE": "LLM Service Gateway API",
    "DESCRIPTION": "Multi-tenant LLM gateway: identity, policy, metering and LLM calls.",
    "VERSION": "1.0.0",
    "SERVE_INCLUDE_SCHEMA": False,
    # 3.1: nullable types and constants as JSON Schema writes them (the /v1 bodies use both).
    "OAS_VERSION": "3.1.0",
    # Swagger UI from the gateway's own static files (drf-spectacular-sidecar): no CDN, works offline.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # The /v1 endpoints are plain async views (the SDK-facing fast path), not DRF: described by hand.
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums",
                             "gateway_project.openapi.add_error_responses",
                             "gateway_project.openapi.add_v1_paths"],
    "COMPONENT_SPLIT_REQUEST": True,
}

# --- Gateway --------------------------------------------------------------------
GATEWAY_ENFORCEMENT_MODE = env.str("GATEWAY_ENFORCEMENT_MODE", default="HARD")
if GATEWAY_ENFORCEMENT_MODE not in {"SHADOW", "SOFT", "HARD"}:
    raise ImproperlyConfigured("GATEWAY_ENFORCEMENT_MODE must be SHADOW, SOFT or HARD.")
RESERVATION_LEASE_SECONDS = env.int("RESERVATION_LEASE_SECONDS", default=120)
# Which implementation of the holds contract runs: "" = PostgreSQL's function on PostgreSQL, Python
# elsewhere; "python" forces the Python one (the contract suite and bench-policy compare the two).
METERING_HOLDS_BACKEND = env.str("METERING_HOLDS_BACKEND", default="")
# A provider refusing our key alerts super admins once per model per this many seconds.
PROVIDER_ALERT_COOLDOWN_SECONDS = env.int("PROVIDER_ALERT_COOLDOWN_SECONDS", default=3600)
# How old the usage a usage-based throttle rule reads may be (per process; 0 = read every call).
POLICY_USAGE_CACHE_SECONDS = env.float("POLICY_USAGE_CACHE_SECONDS", default=1.0)
# The offline provider serves canned text: on in the embedded default, off in production unless switched on.
OFFLINE_PROVIDER_ENABLED = env.bool("OFFLINE_PROVIDER_ENABLED", default=not PRODUCTION)
# Off: a candidate list with a model of a configured real provider never falls to offline. On: operators allow it.
OFFLINE_PROVIDER_MIX = env.bool("OFFLINE_PROVIDER_MIX", default=False)
OFFLINE_PROVIDER_LATENCY_MS = env.int("OFFLINE_PROVIDER_LATENCY_MS", default=0)
IDEMPOTENCY_WAIT_SECONDS = env.int("IDEMPOTENCY_WAIT_SECONDS", default=30)

# Tests that wrap each request in the test's own transaction run DB steps on the request thread.
DB_STEPS_THREAD_SENSITIVE = env.bool("DB_STEPS_THREAD_SENSITIVE", default=False)

# --- Router -------------------------------------------------------------------------
ROUTER_STRATEGY = env.str("ROUTER_STRATEGY", default="cost")
# "PRO=performance,LLM2_DRAFT=availability": keys are plan or task codes; a task beats a plan.
ROUTER_STRATEGY_OVERRIDES = env.dict("ROUTER_STRATEGY_OVERRIDES", default={})
if {ROUTER_STRATEGY, *ROUTER_STRATEGY_OVERRIDES.values()} - {"cost", "performance", "availability"}:
    raise ImproperlyConfigured("Router strategies are cost, performance or availability.")
ROUTER_ATTEMPT_TIMEOUT_SECONDS = env.float("ROUTER_ATTEMPT_TIMEOUT_SECONDS", default=60.0)
ROUTER_DEADLINE_SECONDS = env.float("ROUTER_DEADLINE_SECONDS", default=120.0)
ROUTER_BREAKER_FAILURES = env.int("ROUTER_BREAKER_FAILURES", default=5)
ROUTER_BREAKER_COOLDOWN_SECONDS = env.float("ROUTER_BREAKER_COOLDOWN_SECONDS", default=30.0)
ROUTER_BACKOFF_BASE_SECONDS = env.float("ROUTER_BACKOFF_BASE_SECONDS", default=0.05)
ROUTER_BACKOFF_MAX_SECONDS = env.float("ROUTER_BACKOFF_MAX_SECONDS", default=1.0)
# How stale (per process) the breaker and latency state other processes wrote may be; this
# process's own failures and successes are seen at once. 0: read the shared cache on every call.
ROUTER_STATE_TTL_SECONDS = env.float("ROUTER_STATE_TTL_SECONDS", default=1.0)
# Usage of calls that ran while the metering database was down (metering/spool.py): one Redis hash
# that every gateway host shares; the directory is the fallback when that Redis is down too, and the
# store itself without Redis (embedded: one host). Empty METERING_SPOOL_REDIS_URL: the directory only.
METERING_SPOOL_DIR = Path(env.str("METERING_SPOOL_DIR", default=str(VAR_DIR / "spool")))
METERING_SPOOL_REDIS_URL = env.str("METERING_SPOOL_REDIS_URL", default=REDIS_URL)
METERING_SPOOL_REDIS_KEY = env.str("METERING_SPOOL_REDIS_KEY", default="metering:usage-spool")
# How long a replayer's claim on a record keeps other replayers off it (a crashed one's claim expires).
METERING_SPOOL_CLAIM_SECONDS = env.int("METERING_SPOOL_CLAIM_SECONDS", default=60)

# --- LLM providers ------------------------------------------------------------------
# A provider is configured when its key (openai_compatible: its base URL) is set here; otherwise
# an active ProviderCredential from the admin is used (llm/providers/registry.py). Empty = unset.
OPENAI_API_KEY = env.str("OPENAI_API_KEY", default="")
OPENAI_BASE_URL = env.str("OPENAI_BASE_URL", default="")
GROK_API_KEY = env.str("GROK_API_KEY", default="")
GROK_BASE_URL = env.str("GROK_BASE_URL", default="https://api.x.ai/v1")
GOOGLE_AI_API_KEY = env.str("GOOGLE_AI_API_KEY", default="")
GEMINI_BASE_URL = env.str("GEMINI_BASE_URL", default="")
ANTHROPIC_API_KEY = env.str("ANTHROPIC_API_KEY", default="")
ANTHROPIC_BASE_URL = env.str("ANTHROPIC_BASE_URL", default="")
OPENAI_COMPATIBLE_BASE_URL = env.str("OPENAI_COMPATIBLE_BASE_URL", default="")  # vLLM, Ollama, llama.cpp ...
OPENAI_COMPATIBLE_API_KEY = env.str("OPENAI_COMPATIBLE_API_KEY", default="")  # optional
PROVIDER_TIMEOUT_SECONDS = env.float("PROVIDER_TIMEOUT_SECONDS", default=60.0)
# --- Reconciliation with the providers' own billing (llm/reconcile/) ------------------------
# Organisation admin keys (read the usage and cost reports; never used for model calls). An active
# ProviderAdminCredential (admin, encrypted) is used when the variable is empty. Requests go to the
# provider's base URL above (OPENAI_BASE_URL / ANTHROPIC_BASE_URL, else the vendor's).
OPENAI_ADMIN_API_KEY = env.str("OPENAI_ADMIN_API_KEY", default="")
ANTHROPIC_ADMIN_API_KEY = env.str("ANTHROPIC_ADMIN_API_KEY", default="")
# A figure drifts when |provider - ledger| exceeds BOTH its absolute tolerance and RECONCILE_DRIFT_PERCENT
# of the larger of the two (cost also allows 1 micro-USD per call: the ledger rounds each call up).
RECONCILE_DRIFT_PERCENT = env.float("RECONCILE_DRIFT_PERCENT", default=1.0)
RECONCILE_DRIFT_REQUESTS = env.int("RECONCILE_DRIFT_REQUESTS", default=0)
RECONCILE_DRIFT_TOKENS = env.int("RECONCILE_DRIFT_TOKENS", default=100)
RECONCILE_DRIFT_MICRO_USD = env.int("RECONCILE_DRIFT_MICRO_USD", default=10_000)  # one cent
RECONCILE_TIMEOUT_SECONDS = env.float("RECONCILE_TIMEOUT_SECONDS", default=30.0)

# --- Prior-art search services (llm/search/) ---------------------------------------------
# Each source is optional and searched only when its credentials are set (environment).
# PatentsView's PatentSearch API was paused on 2026-03-20 (its move to the USPTO Open Data Portal)
# and its host no longer resolves: its client is gone, ODP replaces it.
USPTO_ODP_BASE_URL = env.str("USPTO_ODP_BASE_URL", default="https://api.uspto.gov")
USPTO_ODP_API_KEY = env.str("USPTO_ODP_API_KEY", default="")
EPO_OPS_BASE_URL = env.str("EPO_OPS_BASE_URL", default="https://ops.epo.org/3.2")
EPO_OPS_KEY = env.str("EPO_OPS_KEY", default="")
EPO_OPS_SECRET = env.str("EPO_OPS_SECRET", default="")
# Pause before the next OPS request while its throttling header says the search service is yellow /
# red (fair use); black or a quota refusal parks the source for EPO_OPS_BLOCK_SECONDS (or Retry-After).
EPO_OPS_THROTTLE_PAUSE_SECONDS = env.float("EPO_OPS_THROTTLE_PAUSE_SECONDS", default=1.0)
EPO_OPS_BLOCK_SECONDS = env.float("EPO_OPS_BLOCK_SECONDS", default=60.0)
# OpenAlex wants a free API key since 2026-02 (without one the daily allowance is tiny); mailto
# identifies the caller.
OPENALEX_BASE_URL = env.str("OPENALEX_BASE_URL", default="https://api.openalex.org")
OPENALEX_MAILTO = env.str("OPENALEX_MAILTO", default="")
OPENALEX_API_KEY = env.str("OPENALEX_API_KEY", default="")
# Search answers are kept in the shared cache (Redis in production) keyed by source, normalised
# query and filters: a repeat within the TTL sends nothing and costs no search fee.
PRIOR_ART_CACHE_TTL_SECONDS = env.int("PRIOR_ART_CACHE_TTL_SECONDS", default=24 * 3600)
SEARCH_TIMEOUT_SECONDS = env.float("SEARCH_TIMEOUT_SECONDS", default=15.0)  # per attempt, whole answer
SEARCH_RETRIES = env.int("SEARCH_RETRIES", default=2)  # extra attempts after a transient failure
SEARCH_BACKOFF_SECONDS = env.float("SEARCH_BACKOFF_SECONDS", default=0.5)  # doubles per retry


def _fernet_keys_check(value: str) -> str:
    # Comma-separated Fernet keys, newest first (older ones only decrypt: key rotation).
    import base64
    import binascii

    keys = [k.strip() for k in value.split(",") if k.strip()]
    for key in keys:
        try:
            valid = len(base64.urlsafe_b64decode(key.encode())) == 32
        except (binascii.Error, ValueError):
            valid = False
        if not valid:
            raise ImproperlyConfigured(
                "CREDENTIALS_ENCRYPTION_KEY must hold Fernet keys (32 url-safe base64-encoded bytes), comma-separated,"
                " newest first. Generate one with: python -c 'from cryptography.fernet import Fernet;"
                " print(Fernet.generate_key().decode())'"
            )
    if not keys:
        raise ImproperlyConfigured("CREDENTIALS_ENCRYPTION_KEY holds no key.")
    return ",".join(keys)


def _embedded_credentials_key() -> str:
    # Generated once into var/ (mode 0600 from the start) so stored credentials survive restarts.
    import base64
    import os

    path = VAR_DIR / "credentials_key"
    if not path.exists():
        staging = VAR_DIR / f".credentials_key.{os.getpid()}"
        fd = os.open(staging, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(base64.urlsafe_b64encode(secrets.token_bytes(32)).decode())
        try:
            os.link(staging, path)  # atomic: concurrent first starts agree on one key
        except FileExistsError:
            pass
        finally:
            staging.unlink()
    return path.read_text().strip()


if PRODUCTION:
    CREDENTIALS_ENCRYPTION_KEY = _fernet_keys_check(_require("CREDENTIALS_ENCRYPTION_KEY"))
else:
    CREDENTIALS_ENCRYPTION_KEY = _fernet_keys_check(
        env.str("CREDENTIALS_ENCRYPTION_KEY", default="") or _embedded_credentials_key()
    )

# --- I18N, static ------------------------------------------------------------------
LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = VAR_DIR / "static"
STATIC_ROOT.mkdir(exist_ok=True)
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env.str("LOG_LEVEL", default="INFO")},
    # The HTTP clients' per-request INFO lines would be one more line per metered call.
    "loggers": {"django.db.backends": {"level": "WARNING"}, "httpx": {"level": "WARNING"},
                "httpx2": {"level": "WARNING"}},
}

# --- Staff sign-in: single sign-on (OIDC) and two-factor (TOTP) -------------------------------
# adminconsole/sso.py and adminconsole/otp.py. The admin site is the gateway's (the sign-in rules apply
# to /admin/ and /console/ alike); django-otp keeps the verified device in the session.
INSTALLED_APPS[INSTALLED_APPS.index("django.contrib.admin")] = "adminconsole.admin_app.GatewayAdminConfig"
INSTALLED_APPS += ["django_otp", "django_otp.plugins.otp_totp"]
MIDDLEWARE.insert(MIDDLEWARE.index("django.contrib.auth.middleware.AuthenticationMiddleware") + 1,
                  "django_otp.middleware.OTPMiddleware")
AUTHENTICATION_BACKENDS = ["django.contrib.auth.backends.ModelBackend", "adminconsole.sso.StaffOIDCBackend"]

# OIDC is on when all three are set. The provider's redirect URI for this client: https://<host>/oidc/callback/
OIDC_ISSUER = env.str("OIDC_ISSUER", default="")
OIDC_RP_CLIENT_ID = env.str("OIDC_RP_CLIENT_ID", default="")
OIDC_RP_CLIENT_SECRET = env.str("OIDC_RP_CLIENT_SECRET", default="")
# Empty: from the issuer's discovery document (<issuer>/.well-known/openid-configuration).
OIDC_OP_AUTHORIZATION_ENDPOINT = env.str("OIDC_OP_AUTHORIZATION_ENDPOINT", default="")
OIDC_OP_TOKEN_ENDPOINT = env.str("OIDC_OP_TOKEN_ENDPOINT", default="")
OIDC_OP_USER_ENDPOINT = env.str("OIDC_OP_USER_ENDPOINT", default="")
OIDC_OP_JWKS_ENDPOINT = env.str("OIDC_OP_JWKS_ENDPOINT", default="")
OIDC_DISCOVERY_CACHE_SECONDS = env.int("OIDC_DISCOVERY_CACHE_SECONDS", default=86400)
OIDC_RP_SIGN_ALGO = env.str("OIDC_RP_SIGN_ALGO", default="RS256")
OIDC_RP_SCOPES = env.str("OIDC_RP_SCOPES", default="openid email profile")
# Who is staff: members of these groups (the ID token's or userinfo's OIDC_GROUPS_CLAIM), or people with a
# verified address in these domains (read-only staff). Anyone else is refused.
OIDC_GROUPS_CLAIM = env.str("OIDC_GROUPS_CLAIM", default="groups")
OIDC_SUPERUSER_GROUPS = env.list("OIDC_SUPERUSER_GROUPS", default=[])
OIDC_STAFF_GROUPS = env.list("OIDC_STAFF_GROUPS", default=[])
OIDC_STAFF_EMAIL_DOMAINS = env.list("OIDC_STAFF_EMAIL_DOMAINS", default=[])
# Off only for a provider that never sends email_verified (the domain rule then trusts the address as sent).
OIDC_REQUIRE_VERIFIED_EMAIL = env.bool("OIDC_REQUIRE_VERIFIED_EMAIL", default=True)
# With SSO on, staff may still log in with a password (break-glass accounts, with two-factor) unless off.
OIDC_STAFF_PASSWORD_LOGIN = env.bool("OIDC_STAFF_PASSWORD_LOGIN", default=True)
OIDC_SESSION_SECONDS = env.int("OIDC_SESSION_SECONDS", default=12 * 3600)
OIDC_CLOCK_SKEW_SECONDS = env.int("OIDC_CLOCK_SKEW_SECONDS", default=60)
OIDC_TIMEOUT = env.float("OIDC_TIMEOUT_SECONDS", default=10.0)
OIDC_VERIFY_SSL = env.bool("OIDC_VERIFY_SSL", default=True)
OIDC_USE_NONCE = True
OIDC_USE_PKCE = env.bool("OIDC_USE_PKCE", default=True)
OIDC_AUTHENTICATION_CALLBACK_URL = "oidc_authentication_callback"
_oidc_set = [name for name in ("OIDC_ISSUER", "OIDC_RP_CLIENT_ID", "OIDC_RP_CLIENT_SECRET") if globals()[name]]
if _oidc_set and len(_oidc_set) < 3:
    raise ImproperlyConfigured("Single sign-on needs OIDC_ISSUER, OIDC_RP_CLIENT_ID and OIDC_RP_CLIENT_SECRET"
                               f" together (set: {', '.join(_oidc_set)}).")
if _oidc_set and not (OIDC_SUPERUSER_GROUPS or OIDC_STAFF_GROUPS or OIDC_STAFF_EMAIL_DOMAINS):
    raise ImproperlyConfigured("Single sign-on is on but nobody could sign in: set OIDC_SUPERUSER_GROUPS,"
                               " OIDC_STAFF_GROUPS or OIDC_STAFF_EMAIL_DOMAINS.")

# Two-factor for staff password logins. On in production: every staff password login needs an enrolled
# device (manage.py staff_totp enroll <username>). Off in the embedded default, so `make run`'s demo super
# admin logs in with its password; a staff user who has a device must use it either way.
STAFF_REQUIRE_2FA = env.bool("STAFF_REQUIRE_2FA", default=PRODUCTION)
OTP_TOTP_ISSUER = env.str("OTP_TOTP_ISSUER", default="LLM Gateway")
OTP_ADMIN_HIDE_SENSITIVE_DATA = True  # a device's secret is shown once, by the enrol command

# --- /metrics access ----------------------------------------------------------------------------
# Both unset: open (as a scrape target on a private network). METRICS_BEARER_TOKEN: scrapes send
# "Authorization: Bearer <token>" (else 401). METRICS_ALLOWED_IPS: CIDRs of the scrapers' addresses (else
# 403): REMOTE_ADDR, or behind GATEWAY_TRUSTED_PROXY_COUNT proxies of your own the address they forwarded.
# Both set: both are required.
METRICS_BEARER_TOKEN = env.str("METRICS_BEARER_TOKEN", default="")
METRICS_ALLOWED_IPS = env.list("METRICS_ALLOWED_IPS", default=[])


def _cidrs_check(values: list[str]) -> list[str]:
    import ipaddress

    try:
        return [str(ipaddress.ip_network(v.strip(), strict=False)) for v in values if v.strip()]
    except ValueError as exc:
        raise ImproperlyConfigured(f"METRICS_ALLOWED_IPS holds an address or network that is not one: {exc}")


METRICS_ALLOWED_IPS = _cidrs_check(METRICS_ALLOWED_IPS)
