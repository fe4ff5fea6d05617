from django.contrib import admin

from portal.api.models import ApiToken


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """Tokens are created on the settings page or with create_api_token; the admin can list and revoke."""

    list_display = ["name", "user", "prefix", "created", "expires", "last_used", "revoked"]
    list_filter = ["revoked"]
    search_fields = ["name", "user__username", "prefix"]
    readonly_fields = ["user", "prefix", "digest", "created", "last_used"]
    fields = ["name", "user", "prefix", "digest", "teams", "created", "expires", "last_used", "revoked"]

    def has_add_permission(self, request):
        return False
