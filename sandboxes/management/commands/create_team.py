from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError

from sandboxes.services.actors import Actor
from sandboxes.services.errors import ServiceError
from sandboxes.services.teams import create_team


class Command(BaseCommand):
    help = "Create a team, optionally with an existing user as its owner."

    def add_arguments(self, parser):
        parser.add_argument("slug", help="short lowercase name, e.g. platform")
        parser.add_argument("--name", default="", help="display name (default: the slug)")
        parser.add_argument("--owner", help="username of the team's first owner")

    def handle(self, *args, slug, name, owner, **options):
        user = None
        if owner:
            user = get_user_model().objects.filter(username=owner).first()
            if user is None:
                raise CommandError(f"no user {owner!r}; create it first (createsuperuser)")
        try:
            team = create_team(slug=slug, name=name, owner=user, actor=Actor.system())
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(team.slug)
