from django.core.management.base import BaseCommand

from sandboxes.schedules import sync_schedules


class Command(BaseCommand):
    help = (
        "Install the background schedules declared in sandboxes/schedules.py (sweep, "
        "snapshot retention) into django-q2, by name. Safe to run any number of times."
    )

    def handle(self, *args, **options):
        changes = sync_schedules()
        for line in changes:
            self.stdout.write(line)
        if not changes:
            self.stdout.write("schedules are up to date")
