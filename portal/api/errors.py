"""How the API answers errors: DRF's shapes, plus Django's own request errors as 400 instead of 500, and a
full disk as a JSON 503 instead of an HTML 500."""
import logging

from django.core.exceptions import RequestDataTooBig
from django.db import DatabaseError
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler

from portal.storage import STORAGE_FULL, is_storage_full

logger = logging.getLogger(__name__)


def api_exception_handler(exc, context):
    """DRF's handler; a body over Django's upload limit becomes a 400 that says so, and a write refused
    because the disk is full a 503 (the client may try again once an operator freed space)."""
    if isinstance(exc, (DatabaseError, OSError)) and is_storage_full(exc):
        logger.error("API request refused, the storage is full: %s", exc)
        return Response({"detail": f"{STORAGE_FULL.capitalize()}: the request could not be stored. Try again "
                                   "once an operator has freed space."},
                        status=status.HTTP_503_SERVICE_UNAVAILABLE, headers={"Retry-After": "60"})
    if isinstance(exc, RequestDataTooBig):
        return Response({"body": [f"The request body is too large: {exc}"]}, status=status.HTTP_400_BAD_REQUEST)
    return exception_handler(exc, context)
