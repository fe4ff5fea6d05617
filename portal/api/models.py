"""API tokens and the compressed store of per-request raw samples."""
import hashlib
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import models
from django.utils import timezone

from portal.accounts.models import Team

TOKEN_PREFIX = "embp_"
# How often last_used is written: once a minute is enough to show "last used" and spares a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)


def hash_token(raw: str) -> str:
    """The stored form of a token: only its SHA-256 digest is kept."""
    return hashlib.sha256(raw.encode()).hexdigest()


class ApiTokenQuerySet(models.QuerySet):
    def active(self):
        now = timezone.now()
        return self.filter(revoked__isnull=True).filter(models.Q(expires__isnull=True) | models.Q(expires__gt=now))


class ApiToken(models.Model):
    """A personal token for scripts and CI. It acts as its user, limited to `teams` when any are chosen."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="api_tokens")
    name = models.CharField(max_length=100)
    # The first characters of the token, shown in lists so a person can tell tokens apart.
    prefix = models.CharField(max_length=20)
    digest = models.CharField(max_length=64, unique=True)
    teams = models.ManyToManyField(
        Team, blank=True, related_name="+", help_text="Limit the token to these teams; none means all of yours."
    )
    created = models.DateTimeField(auto_now_add=True)
    expires = models.DateTimeField(null=True, blank=True)
    last_used = models.DateTimeField(null=True, blank=True)
    revoked = models.DateTimeField(null=True, blank=True)

    objects = ApiTokenQuerySet.as_manager()

    class Meta:
        ordering = ["-created", "-id"]

    def __str__(self) -> str:
        return f"{self.name} ({self.prefix}…)"

    @classmethod
    def issue(cls, user, name: str, *, expires=None, teams=None) -> tuple["ApiToken", str]:
        """Create a token; returns the row and the raw token, which is shown once and never stored."""
        raw = TOKEN_PREFIX + secrets.token_urlsafe(32)
        token = cls.objects.create(
            user=user, name=name, prefix=raw[: len(TOKEN_PREFIX) + 6], digest=hash_token(raw), expires=expires
        )
        if teams:
            token.teams.set(teams)
        return token, raw

    @property
    def is_expired(self) -> bool:
        return self.expires is not None and self.expires <= timezone.now()

    @property
    def is_active(self) -> bool:
        return self.revoked is None and not self.is_expired

    def revoke(self) -> None:
        if self.revoked is None:
            self.revoked = timezone.now()
            self.save(update_fields=["revoked"])

    def touch(self) -> None:
        """Record use, at most once per LAST_USED_RESOLUTION."""
        now = timezone.now()
        if self.last_used is None or now - self.last_used >= LAST_USED_RESOLUTION:
            self.last_used = now
            ApiToken.objects.filter(pk=self.pk).update(last_used=now)


class RawSampleChunk(models.Model):
    """A zlib-compressed block of raw-sample CSV lines of one level (see portal/api/samples.py).

    Kept apart from Level so that the main tables stay small; read back in id order.
    """

    run = models.ForeignKey("sweeps.Run", models.CASCADE, related_name="sample_chunks")
    level_index = models.PositiveIntegerField()
    count = models.PositiveIntegerField()
    data = models.BinaryField()

    class Meta:
        indexes = [models.Index(fields=["run", "level_index", "id"])]

    def __str__(self) -> str:
        return f"{self.run_id}#{self.level_index}: {self.count} samples"
