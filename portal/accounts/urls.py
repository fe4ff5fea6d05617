"""URLs of the account settings: the page where a person manages personal API tokens."""
from django.urls import path

from portal.accounts import views

urlpatterns = [
    path("settings/tokens/", views.token_list, name="api-tokens"),
    path("settings/tokens/<int:pk>/revoke/", views.token_revoke, name="api-token-revoke"),
]
