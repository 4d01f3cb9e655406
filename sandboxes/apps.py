from django.apps import AppConfig
from django.db.models.signals import post_migrate


def create_cache_tables(sender, using: str = "default", **kwargs) -> None:
    """Make the database cache tables (the API's throttle counters) as part of `migrate`.

    ``createcachetable`` does nothing for a table that exists or a cache that is not in
    the database (Redis), so running it after every migrate is safe.
    """
    from django.core.management import call_command

    call_command("createcachetable", database=using, verbosity=0)


class SandboxesConfig(AppConfig):
    name = "sandboxes"
    verbose_name = "Sandboxes"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        post_migrate.connect(create_cache_tables, sender=self)
