from django.core.management.base import BaseCommand, CommandError

from sandboxes.management.commands.build_image import finish
from sandboxes.models import Team
from sandboxes.services import images
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ServiceError
from sandboxes.services.snapshots import import_snapshot


class Command(BaseCommand):
    help = (
        "Register an image that already exists on a provider (a PVE template VMID, a Morph "
        "snapshot id, a Docker image, a local layer) as the next version of a preset, and "
        "print its snapshot id. An OCI or Docker image (--ref oci-archive:PATH, "
        "docker-archive:PATH, docker-daemon:NAME, docker://REGISTRY/NAME:TAG) is copied with "
        "skopeo and imported into the provider (local: its layers, each stored once)."
    )

    def add_arguments(self, parser):
        parser.add_argument("--provider", required=True)
        parser.add_argument("--preset", required=True, help="preset id, e.g. 4vcpu_6gb_32gb")
        parser.add_argument("--ref", required=True, help="the provider's reference")
        parser.add_argument("--label", default="")
        parser.add_argument("--activate", action="store_true", help="make it the active version")
        parser.add_argument("--team", help="a team's own version (default: shared by all)")

    def handle(self, *args, provider, preset, ref, label, activate, team, **options):
        team_row = None
        if team:
            team_row = Team.objects.filter(slug=team).first()
            if team_row is None:
                raise CommandError(f"no team {team!r}")
        if images.is_image_ref(ref=ref):
            try:
                build = images.request_import(
                    actor=Actor.system(),
                    provider=provider,
                    preset_ids=[preset],
                    ref=ref,
                    label=label,
                    activate=activate,
                    team=team_row,
                )
            except ServiceError as exc:
                raise CommandError(exc.message) from None
            finish(self, build, wait=True)
            return
        try:
            snapshot = import_snapshot(
                provider=provider,
                preset_id=preset,
                ref=ref,
                label=label,
                activate=activate,
                team=team_row,
                actor=Actor.system(),
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        self.stdout.write(snapshot.snapshot_id)
