import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand
from django.db import transaction

from sandboxes.models import Role, Team
from sandboxes.services.actors import Actor
from sandboxes.services.teams import add_member, create_team


class Command(BaseCommand):
    help = (
        "First run only: create the `admin` superuser (password from ADMIN_PASSWORD, else "
        "generated and printed once) and a `default` team it owns. Does nothing afterwards."
    )

    def handle(self, *args, **options):
        users = get_user_model().objects
        if users.filter(is_superuser=True).exists():
            return
        password = os.environ.get("ADMIN_PASSWORD") or secrets.token_urlsafe(12)
        with transaction.atomic():
            admin = users.create_superuser("admin", email="", password=password)
            team = Team.objects.filter(slug="default").first() or create_team(
                slug="default", name="Default team", actor=Actor.system()
            )
            add_member(team=team, user=admin, role=Role.OWNER, actor=Actor.system())
        if os.environ.get("ADMIN_PASSWORD"):
            self.stdout.write("Created superuser `admin` with the password from ADMIN_PASSWORD.")
        else:
            self.stdout.write(
                self.style.WARNING(
                    f"Created superuser `admin` with password: {password}\n"
                    "This is shown once. Change it in the admin (/admin/password_change/)."
                )
            )
