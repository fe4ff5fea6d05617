"""Mark runs whose worker went silent (no heartbeat for a while) as interrupted.

Every worker already does this on its own timer (EMBPERF_SWEEP_INTERVAL_S); this command is for a
portal with no worker left running, or to apply a different bound once."""
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from portal.sweeps.models import Run


class Command(BaseCommand):
    help = "Mark running runs whose worker has not reported for --stale-after seconds as interrupted."

    def add_arguments(self, parser):
        parser.add_argument("--stale-after", type=float, default=None,
                            help="seconds without a heartbeat (default EMBPERF_STALE_AFTER_S, "
                                 f"{settings.EMBPERF_STALE_AFTER_S:g}; workers write every "
                                 f"{settings.EMBPERF_HEARTBEAT_S:g} s)")

    def handle(self, *args, stale_after: float | None, **options):
        floor = 3 * settings.EMBPERF_HEARTBEAT_S
        if stale_after is not None and stale_after < floor:
            raise CommandError(f"--stale-after below {floor:g} s (3 heartbeats) would interrupt live runs.")
        ids = Run.objects.interrupt_stale(stale_after_s=stale_after)
        self.stdout.write(f"Marked {len(ids)} run(s) interrupted" + (f": {ids}" if ids else "."))
