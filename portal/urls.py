from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpResponsePermanentRedirect
from django.templatetags.static import static
from django.urls import include, path


def favicon(request):
    """Browsers ask for /favicon.ico whatever the page names; the icon is a static file (not a data: URI,
    which the Content-Security-Policy refuses). Resolved per request: the manifest exists only after
    collectstatic."""
    return HttpResponsePermanentRedirect(static("img/favicon.svg"))


urlpatterns = [
    path("admin/", admin.site.urls),
    path("favicon.ico", favicon),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("", include("portal.api.urls")),
    path("", include("portal.accounts.urls")),
    path("", include("portal.history.urls")),  # before front: the history app serves the dashboard at "/"
    path("", include("portal.front.urls")),
]
