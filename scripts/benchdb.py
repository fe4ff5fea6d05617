"""A throw-away portal database for the bench sections: a SQLite file in a temporary folder."""
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def setup_django(tmp: Path, *, migrate: bool = True) -> None:
    """Point Django at `tmp` (database and var/), set it up, and migrate a new database."""
    os.environ["EMBPERF_VAR_DIR"] = str(tmp / "var")
    os.environ["DATABASE_URL"] = f"sqlite:///{tmp / 'bench.sqlite3'}"
    os.environ["DJANGO_SETTINGS_MODULE"] = "portal.settings"
    # Pages render as in the tests: static files from the source folders, no collectstatic manifest needed.
    os.environ.setdefault("EMBPERF_STATIC_FROM_SOURCE", "true")
    os.environ.setdefault("LOG_LEVEL", "WARNING")
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    import django

    django.setup()
    if migrate:
        from django.core.management import call_command

        call_command("migrate", verbosity=0, interactive=False)
