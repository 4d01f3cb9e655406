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


def _connect_worker_signals() -> None:
    """Receivers that run inside django-q2's processes (``sandboxes.services.workers``)."""
    from django_q import signals

    from sandboxes.services import workers

    signals.pre_execute.connect(
        lambda sender, func, task, **kw: workers.note_busy(busy=True),
        weak=False,
        dispatch_uid="sandboxes-worker-busy",
    )
    signals.post_execute_in_worker.connect(
        lambda sender, func, task, **kw: workers.note_busy(busy=False),
        weak=False,
        dispatch_uid="sandboxes-worker-idle",
    )
    signals.post_execute.connect(
        lambda sender, task, **kw: workers.note_done(task=task),
        weak=False,
        dispatch_uid="sandboxes-worker-heartbeat",
    )


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(_install_schedules, sender=self, dispatch_uid="sandboxes-schedules")
        _connect_worker_signals()
        from sandboxes import db_pool

        db_pool.install()
