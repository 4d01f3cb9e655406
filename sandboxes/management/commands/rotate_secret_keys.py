from django.core.management.base import BaseCommand

from sandboxes.services.team_secrets import rotate_keys


class Command(BaseCommand):
    help = (
        "Re-encrypt every team secret with the first of SANDBOX_SECRET_KEYS (then the "
        "older keys can be removed)."
    )

    def handle(self, *args, **options):
        count = rotate_keys()
        self.stdout.write(f"{count} secret(s) re-encrypted with the first key")
