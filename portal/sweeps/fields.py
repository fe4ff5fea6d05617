"""A text field stored encrypted with Fernet, for target API keys."""
import base64
import hashlib

from cryptography.fernet import Fernet, InvalidToken
from django.conf import settings
from django.db import models


def _fernet() -> Fernet:
    key = getattr(settings, "EMBPERF_FERNET_KEY", "") or ""
    if not key:
        # Derived from SECRET_KEY so the embedded set-up needs no extra secret.
        key = base64.urlsafe_b64encode(hashlib.sha256(settings.SECRET_KEY.encode()).digest()).decode()
    return Fernet(key.encode())


class EncryptedTextField(models.TextField):
    """Keeps the plain value in Python and a Fernet token in the database."""

    def from_db_value(self, value, expression, connection):
        if not value:
            return value
        try:
            return _fernet().decrypt(value.encode()).decode()
        except InvalidToken:
            # Encrypted under another key (SECRET_KEY changed): the key must be entered again.
            return ""

    def get_prep_value(self, value):
        value = super().get_prep_value(value)
        if not value:
            return value
        return _fernet().encrypt(value.encode()).decode()
