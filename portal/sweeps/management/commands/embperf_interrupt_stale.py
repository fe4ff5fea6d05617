"""Mark runs whose worker died (no heartbeat for a while) as interrupted. Run from cron or at deploy."""
from django.core.management.base import BaseCommand, CommandError

from workers.recovery import STALE_AFTER_S, interrupt_stale_runs


class Command(BaseCommand):
    help = "Mark running runs whose worker has not reported for --stale-after seconds as interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--stale-after", type=float, default=STALE_AFTER_S,
                            help="seconds without a heartbeat (default %(default)s; workers write every 10 s)")

    def handle(self, *args, stale_after: float, **options):
        if stale_after < 30:
            raise CommandError("--stale-after below 30 s would interrupt live runs; use 30 or more.")
        ids = interrupt_stale_runs(stale_after_s=stale_after)
        self.stdout.write(f"Marked {len(ids)} run(s) interrupted" + (f": {ids}" if ids else "."))
