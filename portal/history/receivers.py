"""Keep each level's derived statistics next to it: computed once when the level is stored."""
from django.db.models.signals import post_save
from django.dispatch import receiver

from portal.history.models import LevelStats
from portal.sweeps.models import Level


@receiver(post_save, sender=Level, dispatch_uid="history-level-stats")
def level_stored(sender, instance: Level, raw: bool = False, **kwargs) -> None:
    """Store (or replace) the noise figures and percentile curve of a freshly stored level."""
    if raw:  # fixtures being loaded: the level document may be partial
        return
    LevelStats.objects.update_or_create(level=instance, defaults=LevelStats.fields_from_level(instance))
