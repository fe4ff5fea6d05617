"""URLs of the API: /api/v1/..., the OpenAPI schema, its docs page, and the API-token settings page."""
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from portal.api import pages, views

router = DefaultRouter()
router.register("teams", views.TeamViewSet, basename="team")
router.register("targets", views.TargetViewSet, basename="target")
router.register("plans", views.PlanViewSet, basename="plan")
router.register("runs", views.RunViewSet, basename="run")

api_v1 = [
    path("compare/", views.CompareView.as_view(), name="compare"),
    path("ingest/", views.IngestView.as_view(), name="ingest"),
    *router.urls,
]

urlpatterns = [
    path("api/v1/", include((api_v1, "api"))),
    path("api/schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("settings/tokens/", pages.token_list, name="api-tokens"),
    path("settings/tokens/<int:pk>/revoke/", pages.token_revoke, name="api-token-revoke"),
]
