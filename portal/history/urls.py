from django.urls import path

from portal.history import views

urlpatterns = [
    path("", views.dashboard, name="dashboard"),
    path("compare/", views.compare, name="compare"),
    path("history/", views.history, name="history"),
    path("history/baseline/<int:pk>/", views.mark_baseline, name="history-baseline"),
]
