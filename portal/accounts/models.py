"""Teams, memberships and personal API tokens: every Target, Plan and Run belongs to one team."""
import hashlib
import logging
import secrets
from datetime import timedelta

from django.conf import settings
from django.db import DatabaseError, models, transaction
from django.db.models.signals import pre_delete
from django.dispatch import receiver
from django.utils import timezone
from django.utils.text import slugify

TOKEN_PREFIX = "embp_"
# How often last_used is written: once a minute is enough to show "last used" and spares a write per request.
LAST_USED_RESOLUTION = timedelta(minutes=1)

logger = logging.getLogger(__name__)


class TeamQuerySet(models.QuerySet):
    def for_user(self, user, *, write: bool = False):
        """Teams the user belongs to (only those where the user may change things when `write`);
        nothing for anonymous users."""
        if not user.is_authenticated:
            return self.none()
        # One condition on one membership row: the user's own, with a role that may write when asked.
        memberships = {"memberships__user": user}
        if write:
            memberships["memberships__role__in"] = Membership.WRITE_ROLES
        return self.filter(**memberships)


class Team(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    created = models.DateTimeField(auto_now_add=True)

    # Declared in the class body: a manager added after class creation loses to the default one.
    objects = TeamQuerySet.as_manager()

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def save(self, *args, **kwargs):
        if not self.slug:
            base = slugify(self.name) or "team"
            slug, n = base, 1
            while Team.objects.filter(slug=slug).exclude(pk=self.pk).exists():
                n += 1
                slug = f"{base}-{n}"
            self.slug = slug
        super().save(*args, **kwargs)


class Membership(models.Model):
    class Role(models.TextChoices):
        OWNER = "owner", "Owner"
        MEMBER = "member", "Member"
        VIEWER = "viewer", "Viewer"

    team = models.ForeignKey(Team, models.CASCADE, related_name="memberships")
    user = models.ForeignKey(settings.AUTH_USER_MODEL, models.CASCADE, related_name="memberships")
    role = models.CharField(max_length=10, choices=Role.choices, default=Role.MEMBER)
    created = models.DateTimeField(auto_now_add=True)

    # The roles that may create and change targets, plans and runs; viewers only read.
    WRITE_ROLES = (Role.OWNER, Role.MEMBER)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["team", "user"], name="unique_membership")]

    def __str__(self) -> str:
        return f"{self.user} in {self.team} ({self.role})"

    @property
    def can_write(self) -> bool:
        return self.role in self.WRITE_ROLES


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
        # The table keeps the name it was created with, so moving the model lost no token.
        db_table = "api_apitoken"
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
        """Record use, at most once per LAST_USED_RESOLUTION. Bookkeeping only: a database that refuses
        the write (a full disk) must not fail the request that uses the token."""
        now = timezone.now()
        if self.last_used is None or now - self.last_used >= LAST_USED_RESOLUTION:
            self.last_used = now
            try:
                with transaction.atomic():
                    ApiToken.objects.filter(pk=self.pk).update(last_used=now)
            except DatabaseError as exc:
                logger.warning("token %s: could not record its last use (%s)", self.prefix, exc)


@receiver(pre_delete, sender=Team)
def revoke_tokens_scoped_to_team(sender, instance: Team, **kwargs) -> None:
    """A token limited to teams that are all gone would otherwise fall back to "no limit" (all of its
    user's teams): a token whose last team is being deleted is revoked with it."""
    # Count every team of the token first, then keep those of this team: a count after the filter would
    # see this team alone.
    counted = ApiToken.objects.active().annotate(n_teams=models.Count("teams", distinct=True))
    last = list(counted.filter(teams=instance, n_teams=1).values_list("pk", flat=True))
    if last:
        ApiToken.objects.filter(pk__in=last).update(revoked=timezone.now())
        logger.info("team %s deleted: revoked %d token(s) limited to it alone", instance.pk, len(last))
