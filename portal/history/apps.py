from django.apps import AppConfig


class HistoryConfig(AppConfig):
    name = "portal.history"
    label = "history"
    verbose_name = "History and comparison"

    def ready(self):
        from portal.history import receivers  # noqa: F401  (connects the level-stored receiver)
