"""embperf settings: every value comes from an environment variable.

The defaults give the embedded set-up (SQLite and a file-system Celery broker under
var/), so `make run` needs no external service, with production's safety: DEBUG is off unless
DEBUG=true. Production sets DATABASE_URL, CELERY_BROKER_URL, SECRET_KEY, ALLOWED_HOSTS and the
HTTPS settings (docs/deploy.md, docs/production.env).
"""
import secrets
from datetime import timedelta
from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured

from benchmarks.outbound import parse_rules
from benchmarks.plan import PlanLimits
from portal.envconf import env_bool, env_float, env_header, env_int, env_list, env_str

BASE_DIR = Path(__file__).resolve().parent.parent
VAR_DIR = Path(env_str("EMBPERF_VAR_DIR", str(BASE_DIR / "var")))
# The database, broker queue and secret key live here: readable by the portal's own user only.
VAR_DIR.mkdir(mode=0o700, parents=True, exist_ok=True)
try:
    VAR_DIR.chmod(0o700)
except PermissionError:  # a folder the operator made for us and owns: their permissions stand
    pass


def _secret_key() -> str:
    key = env_str("SECRET_KEY")
    if key:
        return key
    # Generated once on first start and kept out of the repository.
    path = VAR_DIR / "secret_key"
    if not path.exists():
        path.write_text(secrets.token_urlsafe(50))
        path.chmod(0o600)
    return path.read_text().strip()


SECRET_KEY = _secret_key()
# Off unless asked for: the debug page shows settings (database and broker URLs) to anyone.
DEBUG = env_bool("DEBUG", False)
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["127.0.0.1", "localhost", "[::1]", "testserver"])
CSRF_TRUSTED_ORIGINS = env_list("CSRF_TRUSTED_ORIGINS", [])

# HTTPS: off by default so `make run` works on http://127.0.0.1; production turns them on
# (docs/production.env) and `manage.py check --deploy` then has nothing to warn about.
SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", False)
SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 0)
SECURE_HSTS_INCLUDE_SUBDOMAINS = env_bool("SECURE_HSTS_INCLUDE_SUBDOMAINS", False)
SECURE_HSTS_PRELOAD = env_bool("SECURE_HSTS_PRELOAD", False)
# Behind a TLS-terminating proxy: the header (and value) by which it says the request came over HTTPS.
SECURE_PROXY_SSL_HEADER = env_header("SECURE_PROXY_SSL_HEADER")
SESSION_COOKIE_SECURE = env_bool("SESSION_COOKIE_SECURE", False)
CSRF_COOKIE_SECURE = env_bool("CSRF_COOKIE_SECURE", False)

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "whitenoise.runserver_nostatic",
    "django.contrib.staticfiles",
    "django.contrib.humanize",
    "axes",
    "rest_framework",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "portal.accounts",
    "portal.sweeps",
    "portal.api",
    "portal.front",
    "portal.history",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "portal.headers.ContentSecurityPolicyMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    # Last, as django-axes asks: it turns a locked-out sign-in into the lockout page.
    "axes.middleware.AxesMiddleware",
]

# Every page loads only the portal's own files (portal/headers.py); blank turns the header off.
EMBPERF_CSP = env_str(
    "EMBPERF_CSP",
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; object-src 'none'; "
    "base-uri 'self'; form-action 'self'; frame-ancestors 'none'",
)

ROOT_URLCONF = "portal.urls"
WSGI_APPLICATION = "portal.wsgi.application"

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

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{VAR_DIR / 'embperf.sqlite3'}")
try:
    DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60))}
except ValueError as exc:
    raise ImproperlyConfigured(f"DATABASE_URL is not a database URL I understand: {exc}") from None
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # The web process, the worker and the CLI share one file: wait for locks instead of failing.
    DATABASES["default"]["OPTIONS"] = {
        "timeout": 20,
        "transaction_mode": "IMMEDIATE",
        "init_command": "PRAGMA journal_mode=WAL;",
    }
    DATABASES["default"]["CONN_MAX_AGE"] = 0
    _sqlite_file = Path(DATABASES["default"]["NAME"])
    if DATABASES["default"]["NAME"] != ":memory:" and _sqlite_file.parent.is_dir():
        # SQLite creates its file (and its -wal and -shm files, alike) with the umask's permissions;
        # made here first, the database is the portal user's alone.
        _sqlite_file.touch(mode=0o600, exist_ok=True)
        try:
            _sqlite_file.chmod(0o600)
        except PermissionError:
            pass

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
]
# Sign-in throttling (django-axes): after EMBPERF_LOGIN_FAILURE_LIMIT wrong passwords for one user
# name, or from one address, that user name or address may not sign in (not even with the right
# password) for EMBPERF_LOGIN_LOCKOUT_MINUTES. API tokens never go through this (they are not passwords).
AUTHENTICATION_BACKENDS = [
    "axes.backends.AxesStandaloneBackend",
    "django.contrib.auth.backends.ModelBackend",
]
AXES_FAILURE_LIMIT = env_int("EMBPERF_LOGIN_FAILURE_LIMIT", 10)
AXES_COOLOFF_TIME = timedelta(minutes=env_float("EMBPERF_LOGIN_LOCKOUT_MINUTES", 15.0))
AXES_LOCKOUT_PARAMETERS = ["username", "ip_address"]
AXES_RESET_ON_SUCCESS = True
AXES_LOCKOUT_TEMPLATE = "registration/locked_out.html"
AXES_VERBOSE = False  # no banner on every start; lockouts are still logged
# The client's address: the connection's, unless EMBPERF_PROXY_COUNT trusted proxies stand in front
# (then the address they add to X-Forwarded-For). Never the header alone: a client could write it.
EMBPERF_PROXY_COUNT = env_int("EMBPERF_PROXY_COUNT", 0)
AXES_IPWARE_PROXY_COUNT = EMBPERF_PROXY_COUNT or None
AXES_IPWARE_PROXY_ORDER = "right-most"
AXES_IPWARE_META_PRECEDENCE_ORDER = (
    ["HTTP_X_FORWARDED_FOR", "REMOTE_ADDR"] if EMBPERF_PROXY_COUNT else ["REMOTE_ADDR"]
)
LOGIN_URL = "login"
LOGIN_REDIRECT_URL = "/"
LOGOUT_REDIRECT_URL = "login"

LANGUAGE_CODE = "en-us"
TIME_ZONE = env_str("TIME_ZONE", "UTC")
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
STATICFILES_DIRS = [BASE_DIR / "static"]
if (BASE_DIR / "node_modules" / "chart.js" / "dist").is_dir():  # installed by `npm ci` (make assets)
    STATICFILES_DIRS.append(("vendor/chart.js", BASE_DIR / "node_modules" / "chart.js" / "dist"))
# Static files: hashed and compressed by `collectstatic` into staticfiles/ (make run and production
# do it), or, with EMBPERF_STATIC_FROM_SOURCE=true (tests, DEBUG), served by whitenoise straight
# from the source folders and picked up as they change.
STATIC_FROM_SOURCE = env_bool("EMBPERF_STATIC_FROM_SOURCE", DEBUG)
WHITENOISE_USE_FINDERS = STATIC_FROM_SOURCE
WHITENOISE_AUTOREFRESH = STATIC_FROM_SOURCE
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if STATIC_FROM_SOURCE
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}


# Celery (namespace CELERY_ in this module, see portal/taskqueue.py).
BROKER_DIR = VAR_DIR / "broker"
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", "filesystem://")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for sub in ("queue", "processed", "control"):
        (BROKER_DIR / sub).mkdir(parents=True, exist_ok=True)
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_DIR / "queue"),
        "data_folder_out": str(BROKER_DIR / "queue"),
        "processed_folder": str(BROKER_DIR / "processed"),
        "control_folder": str(BROKER_DIR / "control"),
        "store_processed": False,
        # The file-system transport polls its folder; a short interval makes a new run start promptly.
        "polling_interval": 0.25,
    }
elif CELERY_BROKER_URL.startswith(("redis://", "rediss://")):
    # Tasks are acknowledged late; Redis hands an unacknowledged one to another worker after this
    # many seconds, so it must outlast the longest sweep (the task skips a duplicate of a live run).
    CELERY_BROKER_TRANSPORT_OPTIONS = {"visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 12 * 3600)}
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_RESULT_SERIALIZER = "json"
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = False
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
CELERY_TASK_DEFAULT_QUEUE = env_str("EMBPERF_DEFAULT_QUEUE", "sweeps")
# Queues every team's targets may name; any other queue must be granted to the team (admin: Queue grants).
EMBPERF_OPEN_QUEUES = env_list("EMBPERF_OPEN_QUEUES", [CELERY_TASK_DEFAULT_QUEUE])
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
CELERY_TIMEZONE = TIME_ZONE
# The worker's upkeep (stale-run sweeper, presence, bounded shutdown) connects to the worker's signals.
CELERY_IMPORTS = ["workers.recovery"]

# Limits a plan may ask for; the plan rule (benchmarks.plan) enforces them at every door.
EMBPERF_MAX_LEVELS = env_int("EMBPERF_MAX_LEVELS", PlanLimits.max_levels)
EMBPERF_MAX_CONCURRENCY = env_int("EMBPERF_MAX_CONCURRENCY", PlanLimits.max_concurrency)
EMBPERF_MAX_RATE = env_float("EMBPERF_MAX_RATE", PlanLimits.max_rate)
EMBPERF_MAX_LEVEL_SECONDS = env_float("EMBPERF_MAX_LEVEL_SECONDS", PlanLimits.max_level_seconds)
# A whole run's planned time; the sweep task's time limits are sized from it.
EMBPERF_MAX_RUN_SECONDS = env_float("EMBPERF_MAX_RUN_SECONDS", PlanLimits.max_run_seconds)
# The longest vector any server may answer with (it sizes every answer's memory cap), and what one
# worker may hold for a plan's requests in flight; a plan that could take more is refused at save.
EMBPERF_MAX_VECTOR_LENGTH = env_int("EMBPERF_MAX_VECTOR_LENGTH", PlanLimits.max_vector_length)
EMBPERF_MAX_WORKER_MEMORY_MIB = env_int("EMBPERF_MAX_WORKER_MEMORY_MIB", PlanLimits.max_worker_memory_mib)
# Tokenizer files a target may name (docs/security.md): none by default (Hugging Face model ids only);
# with a folder, files inside it, given as paths relative to it. Each tokenizer is capped in size.
EMBPERF_TOKENIZER_DIR = env_str("EMBPERF_TOKENIZER_DIR", "")
EMBPERF_MAX_TOKENIZER_MIB = env_int("EMBPERF_MAX_TOKENIZER_MIB", 64)
# Outbound policy (docs/security.md): what the engine may contact, as CIDRs and host names with
# optional ports. Blank: loopback and private ranges. Link-local, cloud metadata, unspecified,
# multicast and broadcast addresses and this portal's own services are refused unless listed.
EMBPERF_ALLOWED_TARGETS = env_str("EMBPERF_ALLOWED_TARGETS", "")
try:
    parse_rules(EMBPERF_ALLOWED_TARGETS)
except ValueError as exc:
    raise ImproperlyConfigured(f"EMBPERF_ALLOWED_TARGETS: {exc}") from None
# How often one user may press "Test connection" (a Django REST framework rate, e.g. 10/minute).
EMBPERF_PROBE_RATE = env_str("EMBPERF_PROBE_RATE", "10/minute")
# The cache the throttles count in (probes, API rates). Blank: Django's per-process memory cache, right
# for one web process only; with several (gunicorn -w N), a Redis URL they all share, e.g.
# redis://127.0.0.1:6379/1 (`check --deploy` warns otherwise).
EMBPERF_CACHE_URL = env_str("EMBPERF_CACHE_URL", "")
if EMBPERF_CACHE_URL:
    if not EMBPERF_CACHE_URL.startswith(("redis://", "rediss://", "unix://")):
        raise ImproperlyConfigured(f"EMBPERF_CACHE_URL={EMBPERF_CACHE_URL!r} is not a redis://, rediss:// or "
                                   "unix:// URL")
    CACHES = {"default": {"BACKEND": "django.core.cache.backends.redis.RedisCache", "LOCATION": EMBPERF_CACHE_URL}}
# A sweep whose target another run is measuring waits, looking again this often (seconds).
EMBPERF_TARGET_WAIT_S = env_float("EMBPERF_TARGET_WAIT_S", 5.0)

# Crash recovery (docs/operations.md). A running sweep's worker writes its heartbeat this often (s):
EMBPERF_HEARTBEAT_S = env_float("EMBPERF_HEARTBEAT_S", 5.0)
# a run whose heartbeat is older than this is taken for dead and marked interrupted; every worker
# looks for such runs this often (s), so a dead worker's run ends within STALE_AFTER + SWEEP_INTERVAL:
EMBPERF_STALE_AFTER_S = env_float("EMBPERF_STALE_AFTER_S", 30.0)
EMBPERF_SWEEP_INTERVAL_S = env_float("EMBPERF_SWEEP_INTERVAL_S", 10.0)
if EMBPERF_STALE_AFTER_S < 3 * EMBPERF_HEARTBEAT_S:
    raise ImproperlyConfigured(
        f"EMBPERF_STALE_AFTER_S={EMBPERF_STALE_AFTER_S:g} must be at least 3 x EMBPERF_HEARTBEAT_S "
        f"({EMBPERF_HEARTBEAT_S:g}), or live runs would be taken for dead")
# A worker that loses the database retries its writes for this long (s), holding results in memory,
# before it ends the run failed and saves the levels to a file under EMBPERF_VAR_DIR/unsaved/.
EMBPERF_DB_RETRY_S = env_float("EMBPERF_DB_RETRY_S", 300.0)
# On SIGTERM a worker stops its sweeps at once and marks them interrupted; it exits within this (s).
EMBPERF_SHUTDOWN_S = env_float("EMBPERF_SHUTDOWN_S", 20.0)
# A run queued this long (s) on a queue no worker reported consuming says so on its page.
EMBPERF_NO_WORKER_AFTER_S = env_float("EMBPERF_NO_WORKER_AFTER_S", 5.0)
# A queued run no free worker of its queue received for this long (s) had its message lost by the broker:
# it is sent again once, then failed (portal.sweeps.reconcile).
EMBPERF_REQUEUE_AFTER_S = env_float("EMBPERF_REQUEUE_AFTER_S", 60.0)

REST_FRAMEWORK = {
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    # API tokens for scripts and CI, the session for the browser (browsable API, docs page).
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "portal.accounts.authentication.ApiTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PAGINATION_CLASS": "portal.api.pagination.ApiPagination",
    "DEFAULT_THROTTLE_CLASSES": [
        "rest_framework.throttling.AnonRateThrottle",
        "rest_framework.throttling.UserRateThrottle",
        "rest_framework.throttling.ScopedRateThrottle",
    ],
    "DEFAULT_THROTTLE_RATES": {
        "anon": env_str("EMBPERF_API_THROTTLE_ANON", "60/minute"),
        "user": env_str("EMBPERF_API_THROTTLE_USER", "1200/minute"),
        "ingest": env_str("EMBPERF_API_THROTTLE_INGEST", "120/hour"),
        "start": env_str("EMBPERF_API_THROTTLE_START", "120/hour"),
    },
    "DEFAULT_PARSER_CLASSES": ["portal.api.parsers.LimitedJSONParser"],
    "EXCEPTION_HANDLER": "portal.api.errors.api_exception_handler",
    "TEST_REQUEST_DEFAULT_FORMAT": "json",
}
# Largest result document POST /api/v1/ingest/ accepts (bytes).
EMBPERF_API_MAX_INGEST_BYTES = env_int("EMBPERF_API_MAX_INGEST_BYTES", 20 * 1024 * 1024)
SPECTACULAR_SETTINGS = {
    "TITLE": "embperf API",
    "DESCRIPTION": "Targets, plans, runs and results of embedding-server benchmarks.",
    "VERSION": "1",
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
    # Separate request/response components, so write-only fields (a target's api_key) show correctly.
    "COMPONENT_SPLIT_REQUEST": True,
    # A run's and a level's status are two choice sets under one field name: each keeps a name of its own.
    "ENUM_NAME_OVERRIDES": {
        "StatusEnum": "portal.sweeps.models.Run.Status",
        "LevelStatusEnum": "portal.sweeps.models.Level.Status",
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "root": {"handlers": ["console"], "level": env_str("LOG_LEVEL", "INFO")},
}
