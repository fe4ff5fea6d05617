"""Bearer-token authentication for the API (`Authorization: Bearer embp_...`)."""
from rest_framework import authentication, exceptions

from portal.accounts.models import TOKEN_PREFIX, ApiToken, hash_token


class ApiTokenAuthentication(authentication.BaseAuthentication):
    """Accepts `Authorization: Bearer <token>` (or `Token <token>`); request.auth is the ApiToken."""

    keywords = ("bearer", "token")

    def authenticate(self, request):
        header = authentication.get_authorization_header(request).split()
        if not header or header[0].decode("latin-1").lower() not in self.keywords:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Authorization header must be 'Bearer <token>'.")
        try:
            raw = header[1].decode()
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("The API token contains invalid characters.") from None
        if not raw.startswith(TOKEN_PREFIX):
            raise exceptions.AuthenticationFailed(f"Not an embperf API token (they start with {TOKEN_PREFIX}).")
        token = ApiToken.objects.select_related("user").filter(digest=hash_token(raw)).first()
        if token is None:
            raise exceptions.AuthenticationFailed("Unknown API token.")
        if token.revoked is not None:
            raise exceptions.AuthenticationFailed("This API token was revoked.")
        if token.is_expired:
            raise exceptions.AuthenticationFailed("This API token has expired.")
        if not token.user.is_active:
            raise exceptions.AuthenticationFailed("The token's user account is disabled.")
        token.touch()
        return token.user, token

    def authenticate_header(self, request):
        # Makes unauthenticated requests 401 (with WWW-Authenticate) rather than 403.
        return 'Bearer realm="api"'
