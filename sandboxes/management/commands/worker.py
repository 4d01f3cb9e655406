from django.core.management.base import BaseCommand

from sandboxes.supervisor import run_worker


class Command(BaseCommand):
    help = (
        "Run the background worker: a django-q2 cluster, restarted when it dies or stops "
        "taking tasks (see docs/operations.md, 'Background work')."
    )

    def handle(self, *args, **options):
        run_worker()
