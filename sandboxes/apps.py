from django.apps import AppConfig
from django.db.models.signals import post_migrate


def _install_schedules(sender, using: str = "default", **kwargs) -> None:
    """After ``migrate`` (and a test database flush): the declared schedules are in place."""
    from django.db import connections
    from django_q.models import Schedule

    from sandboxes.schedules import sync_schedules

    # `migrate sandboxes` alone may run before django_q's tables exist.
    if Schedule._meta.db_table in connections[using].introspection.table_names():
        sync_schedules(using=using)


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_install_schedules, sender=self, dispatch_uid="sandboxes-schedules")
