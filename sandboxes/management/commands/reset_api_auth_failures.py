from django.core.management.base import BaseCommand

from sandboxes.services import auth_failures


class Command(BaseCommand):
    help = (
        "Forget the refused API tokens counted against client addresses, so an address "
        "past SANDBOX_API_AUTH_FAILURE_RATE may authenticate again at once."
    )

    def add_arguments(self, parser):
        parser.add_argument("address", nargs="+", help="client address, e.g. 203.0.113.7")

    def handle(self, *args, address, **options):
        for one in address:
            auth_failures.reset(one)
            self.stdout.write(f"reset {one}")
