"""How the API answers errors: DRF's shapes, plus Django's own request errors as 400 instead of 500."""
from django.core.exceptions import RequestDataTooBig
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler


def api_exception_handler(exc, context):
    """DRF's handler; a body over Django's upload limit becomes a 400 that says so."""
    if isinstance(exc, RequestDataTooBig):
        return Response({"body": [f"The request body is too large: {exc}"]}, status=status.HTTP_400_BAD_REQUEST)
    return exception_handler(exc, context)
