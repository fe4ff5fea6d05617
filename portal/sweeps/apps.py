from django.apps import AppConfig


class SweepsConfig(AppConfig):
    name = "portal.sweeps"
    label = "sweeps"

    def ready(self):
        from portal.sweeps import checks  # noqa: F401 - registers the outbound policy's deploy check
