"""URLs of the API: /api/v1/..., the OpenAPI schema and its docs page."""
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerSplitView
from rest_framework.routers import DefaultRouter

from portal.api import views
from portal.headers import API_DOCS_POLICY, with_policy

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
    # The split view serves Swagger UI's start-up script as a file, as the Content-Security-Policy asks.
    path("api/docs/", with_policy(API_DOCS_POLICY)(SpectacularSwaggerSplitView.as_view(url_name="api-schema")),
         name="api-docs"),
]
