import time

from django.core.management.base import BaseCommand, CommandError

from sandboxes.models import ImageBuildStatus, Team
from sandboxes.services import images
from sandboxes.services.actors import Actor
from sandboxes.services.errors import ServiceError


class Command(BaseCommand):
    help = (
        "Build a Debian root filesystem (mmdebstrap) and register it as the next version of "
        "one or more presets (stored once). The worker runs it (progress and log on the "
        "versions page); with --wait this command follows it and prints the new snapshot "
        "id(s), else the build's number."
    )

    def add_arguments(self, parser):
        parser.add_argument("--provider", required=True, help="local or docker")
        parser.add_argument(
            "--preset", action="append", required=True, help="preset id (repeat for several)"
        )
        parser.add_argument("--suite", default=images.DEFAULT_SUITE)
        parser.add_argument(
            "--packages",
            default=",".join(images.DEFAULT_PACKAGES),
            help="comma-separated Debian packages (ca-certificates, bash, procps, less always)",
        )
        parser.add_argument("--mirror", default="", help="default: SANDBOX_DEBIAN_MIRROR")
        parser.add_argument("--label", default="")
        parser.add_argument("--activate", action="store_true", help="make it the active version")
        parser.add_argument("--team", help="a team's own version (default: shared by all)")
        parser.add_argument(
            "--wait", action="store_true", help="wait for the build; print the snapshot ids"
        )

    def handle(
        self,
        *args,
        provider,
        preset,
        suite,
        packages,
        mirror,
        label,
        activate,
        team,
        wait,
        **options,
    ):
        team_row = _team(team)
        try:
            names = images.parse_packages(text=packages)
            build = images.request_build(
                actor=Actor.system(),
                provider=provider,
                preset_ids=preset,
                suite=suite,
                packages=names,
                mirror=mirror,
                label=label,
                activate=activate,
                team=team_row,
            )
        except ServiceError as exc:
            raise CommandError(exc.message) from None
        finish(self, build, wait)


def _team(slug):
    if not slug:
        return None
    team = Team.objects.filter(slug=slug).first()
    if team is None:
        raise CommandError(f"no team {slug!r}")
    return team


def finish(command, build, wait: bool) -> None:
    """Without --wait: say which build was queued. With it: follow the worker's progress
    and print the snapshot ids, or fail with the build's error."""
    if not wait:
        command.stdout.write(f"image build {build.pk} queued (the worker runs it)")
        return
    shown = ""
    started = time.monotonic()
    hinted = False
    while True:
        build.refresh_from_db()
        if build.status in (ImageBuildStatus.SUCCEEDED, ImageBuildStatus.FAILED):
            break
        if build.progress != shown:
            shown = build.progress
            command.stderr.write(f"image build {build.pk}: {shown}")
        if (
            build.status == ImageBuildStatus.QUEUED
            and not hinted
            and time.monotonic() - started > 30
        ):
            hinted = True
            command.stderr.write("still queued: is a worker running (manage.py worker)?")
        time.sleep(1)
    if build.status != ImageBuildStatus.SUCCEEDED:
        raise CommandError(f"image build {build.pk} failed: {build.error}")
    for snapshot_id in build.snapshot_ids:
        command.stdout.write(snapshot_id)
