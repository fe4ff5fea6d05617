"""First start: an admin account and, on an empty database, a demo team. Safe to run every start.

- `admin` is created once, with a generated password printed this one time (only its hash is
  stored). Lost it? `manage.py changepassword admin`.
- When the database has no team yet: team "Demo" (admin is its owner) with the simulator that
  `make run` starts as a target, the classic plan, a short smoke plan and a capacity search.
"""
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from portal.accounts.models import Membership, Team
from portal.sweeps.models import Plan, Target

ADMIN_USERNAME = "admin"
SIMULATOR_URL = "http://127.0.0.1:9100/v1"
SIMULATOR_MODEL = "sim-embed"

DEMO_PLANS = [
    {
        "name": "Classic sweep",
        "description": "Concurrency 1 to 64, 120 s per level, 512-token texts, the model's own dimensions.",
        "levels": [1, 4, 8, 16, 32, 64], "warmup_s": 5, "duration_s": 120, "tokens": 512,
        "dimensions": None, "timeout_s": 30,
    },
    {
        "name": "Smoke",
        "description": "A quick check that a target answers under light load (about 25 s).",
        # No dimensions: the field is not sent and any model answers with its own vector length.
        "levels": [1, 4, 8], "warmup_s": 2, "duration_s": 5, "tokens": 512, "dimensions": None, "timeout_s": 30,
    },
    {
        "name": "Capacity (p99 ≤ 500 ms)",
        "description": "The highest arrival rate the target holds with p99 under 500 ms and at most 1 % errors, "
                       "found by probing and bisecting to 10 % (a few minutes on the simulator).",
        "search": "capacity", "mode": "open", "arrival": "poisson", "levels": [], "max_in_flight": 512,
        "warmup_s": 2, "duration_s": 8, "tokens": 512, "dimensions": None, "timeout_s": 30, "slo_p99_ms": 500,
        "slo_error_rate": 0.01, "capacity_precision": 0.1, "capacity_trials": 2, "capacity_budget_s": 600,
    },
]


class Command(BaseCommand):
    help = "Create the first admin account and, on an empty database, a demo team with the simulator."

    def handle(self, *args, **options):
        self.ensure_admin()
        self.ensure_demo()

    def ensure_admin(self) -> None:
        users = get_user_model()
        if users.objects.filter(username=ADMIN_USERNAME).exists():
            return
        password = secrets.token_urlsafe(12)
        users.objects.create_superuser(ADMIN_USERNAME, email="", password=password)
        line = "=" * 72
        self.stdout.write(
            f"{line}\nCreated the account '{ADMIN_USERNAME}' with the password:  {password}\n"
            "It is shown only this once; change it with `.venv/bin/python manage.py changepassword admin`.\n"
            f"{line}"
        )

    @transaction.atomic
    def ensure_demo(self) -> None:
        if Team.objects.exists():
            return
        team = Team.objects.create(name="Demo")
        admin = get_user_model().objects.get(username=ADMIN_USERNAME)
        Membership.objects.create(team=team, user=admin, role=Membership.Role.OWNER)
        Target.objects.create(
            team=team, name="Simulator", flavor=Target.Flavor.OPENAI, base_urls=[SIMULATOR_URL],
            model_name=SIMULATOR_MODEL, engine=Target.Engine.SIMULATOR, queue="sweeps",
        )
        for spec in DEMO_PLANS:
            Plan.objects.create(team=team, **{"mode": Plan.Mode.CLOSED, **spec})
        self.stdout.write(f"Created the demo team 'Demo' with the simulator as a target and {len(DEMO_PLANS)} plans.")
