from datetime import timedelta

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandError
from django.db import transaction
from django.utils import timezone

from sandboxes.models import Role, Team
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ServiceError
from sandboxes.services.teams import add_member, create_team, get_or_create_user
from sandboxes.services.tokens import create_api_token


class Command(BaseCommand):
    help = "Create an API token for USERNAME in a team and print only the token."

    def add_arguments(self, parser):
        parser.add_argument("username")
        parser.add_argument("--team", required=True, help="the team's slug")
        parser.add_argument(
            "--create-missing",
            action="store_true",
            help="create the user, the team and the membership when they do not exist",
        )
        parser.add_argument("--read-only", action="store_true", help="the token cannot write")
        parser.add_argument("--name", default="", help="a label for the token")
        parser.add_argument("--expires-days", type=int, help="expire after this many days")

    def handle(self, *args, username, team, create_missing, read_only, name, expires_days, **o):
        system = Actor.system()
        try:
            with transaction.atomic():
                user = get_user_model().objects.filter(username=username).first()
                team_row = Team.objects.filter(slug=team).first()
                if create_missing:
                    user = user or get_or_create_user(username)
                    team_row = team_row or create_team(slug=team, actor=system)
                    if not Actor.for_user(user).can_read(team_row):
                        add_member(team=team_row, user=user, role=Role.MEMBER, actor=system)
                if user is None:
                    raise CommandError(f"no user {username!r} (use --create-missing)")
                if team_row is None:
                    raise CommandError(f"no team {team!r} (use --create-missing)")
                expires = None
                if expires_days is not None:
                    if expires_days < 1:
                        raise CommandError("--expires-days must be at least 1")
                    expires = timezone.now() + timedelta(days=expires_days)
                _, raw = create_api_token(
                    user=user,
                    team=team_row,
                    actor=system,
                    name=name,
                    can_write=not read_only,
                    expires_at=expires,
                )
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(raw)
