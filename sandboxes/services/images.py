"""Images: building a Debian root filesystem, importing an OCI image, and registering the
result as the next version of one or more presets (stored once on the provider).

``request_build`` / ``request_import`` validate, record an ``ImageBuild`` and hand it to
the worker (``sandboxes.tasks.run_image_build``); ``perform_build`` does the work with
progress and a capped log on the row, and registers one snapshot version per preset. The
provider side is ``Provider.import_image`` (see docs/images.md).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
import urllib.request
from datetime import datetime, timedelta
from pathlib import Path

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from providers.errors import ProviderError, Unsupported
from providers.images import ImageError, debian, oci
from sandboxes.models import (
    ImageBuild,
    ImageBuildStatus,
    Outcome,
    Preset,
    Team,
)
from sandboxes.services.actors import Actor
from sandboxes.services.backends import enabled_provider_names, get_provider, preset_refusal
from sandboxes.services.errors import InvalidInput, NotAllowed
from sandboxes.services.events import record_event
from sandboxes.services.queue import enqueue_on_commit
from sandboxes.services.snapshots import known_preset, register_snapshot

logger = logging.getLogger(__name__)

TASK = "sandboxes.tasks.run_image_build"
#: The label of the image `make run` builds on first start.
DEFAULT_LABEL = "debian (default)"
#: The log and progress are written to the row at most this often while a build runs.
FLUSH_SECONDS = 1.0


DEFAULT_SUITE = debian.DEFAULT_SUITE
DEFAULT_PACKAGES = debian.DEFAULT_PACKAGES


def parse_packages(*, text: str) -> tuple[str, ...]:
    """``git, curl python3`` -> the package names; InvalidInput naming a bad one."""
    try:
        return debian.parse_packages(text)
    except ValueError as exc:
        raise InvalidInput(str(exc), fields={"packages": [str(exc)]}) from None


def is_image_ref(*, ref: str) -> bool:
    """Whether an import reference names an OCI/Docker image source (skopeo's syntax)."""
    return oci.is_image_ref(ref)


def _require_manager(actor: Actor, team: Team | None) -> None:
    if team is None:
        if not _is_operator(actor):
            raise NotAllowed("only an operator can build shared images")
    elif not actor.can_manage(team):
        raise NotAllowed("only the team's owners and admins can build its images")


def _is_operator(actor: Actor) -> bool:
    if actor.token is not None:
        return False
    return actor.is_automation or (actor.user is not None and actor.user.is_superuser)


def _require_operator_for_host_sources(actor: Actor, what: str) -> None:
    """Files and the Docker daemon of the control plane's host are the operator's: a
    team's admin may build from Debian's configured mirror and import from registries
    only (an ``oci-archive:`` of a host file would copy it into the team's sandboxes)."""
    if not _is_operator(actor):
        raise NotAllowed(f"only an operator can {what}")


def _presets(provider: str, preset_ids: list[str]) -> list[str]:
    if not preset_ids:
        raise InvalidInput("give at least one preset", fields={"preset": ["required"]})
    found = []
    for preset_id in dict.fromkeys(preset_ids):
        preset = known_preset(preset_id)
        message = preset_refusal(preset, provider)
        if message:
            raise InvalidInput(message, fields={"preset": [message]})
        found.append(preset.pk)
    return found


def _create(*, actor: Actor, team: Team | None, provider: str, **fields) -> ImageBuild:
    with transaction.atomic():
        build = ImageBuild.objects.create(
            team=team, provider=provider, created_by=actor.user, **fields
        )
        record_event(
            actor=actor,
            action="build_image",
            outcome=Outcome.REQUESTED,
            team=team,
            data={"build": build.pk, "provider": provider, "source": build.source[:300]},
        )
        enqueue_on_commit(TASK, build.pk, name=f"image-build-{build.pk}")
    return build


def request_build(
    *,
    actor: Actor,
    provider: str,
    preset_ids: list[str],
    suite: str = debian.DEFAULT_SUITE,
    packages: list[str] | tuple[str, ...] = debian.DEFAULT_PACKAGES,
    mirror: str = "",
    label: str = "",
    activate: bool = False,
    team: Team | None = None,
) -> ImageBuild:
    """Queue a Debian build registered as the next version of each of ``preset_ids``."""
    _require_manager(actor, team)
    get_provider(provider)
    presets = _presets(provider, list(preset_ids))
    if mirror and mirror.strip() != settings.SANDBOX_DEBIAN_MIRROR:
        _require_operator_for_host_sources(actor, "choose another Debian mirror")
    mirror = (mirror or settings.SANDBOX_DEBIAN_MIRROR).strip()
    try:
        spec = debian.DebianSpec(suite=suite, packages=tuple(packages), mirror=mirror)
    except ValueError as exc:
        raise InvalidInput(str(exc)) from None
    return _create(
        actor=actor,
        team=team,
        provider=provider,
        kind=ImageBuild.KIND_DEBIAN,
        presets=presets,
        suite=spec.suite,
        packages=list(spec.packages),
        mirror=spec.mirror,
        label=(label or f"debian {spec.suite}")[:200],
        activate=activate,
    )


def request_import(
    *,
    actor: Actor,
    provider: str,
    preset_ids: list[str],
    ref: str,
    label: str = "",
    activate: bool = False,
    team: Team | None = None,
) -> ImageBuild:
    """Queue an OCI import (skopeo) registered as the next version of each preset."""
    _require_manager(actor, team)
    get_provider(provider)
    presets = _presets(provider, list(preset_ids))
    if isinstance(ref, str) and not ref.startswith("docker://"):
        _require_operator_for_host_sources(actor, "import from the host's files or Docker daemon")
    try:
        oci.check_ref(ref)
    except ValueError as exc:
        raise InvalidInput(str(exc), fields={"ref": [str(exc)]}) from None
    return _create(
        actor=actor,
        team=team,
        provider=provider,
        kind=ImageBuild.KIND_OCI,
        presets=presets,
        ref=ref,
        label=(label or ref)[:200],
        activate=activate,
    )


class _Log:
    """The build's log: the last SANDBOX_IMAGE_LOG_BYTES kept, flushed to the row
    about once a second (and at the end)."""

    def __init__(self, build: ImageBuild) -> None:
        self.build = build
        self.limit = settings.SANDBOX_IMAGE_LOG_BYTES
        self.text = build.log
        self.progress = build.progress
        self.flushed = 0.0
        self.lock = threading.Lock()

    def line(self, text: str) -> None:
        with self.lock:
            self.text = (self.text + text.rstrip() + "\n")[-self.limit :]
            if text.startswith(("I: ", "step: ")) or not self.progress:
                self.progress = text.removeprefix("step: ").removeprefix("I: ")[:200]
            if time.monotonic() - self.flushed >= FLUSH_SECONDS:
                self._flush()

    def step(self, text: str) -> None:
        self.line(f"step: {text}")

    def _flush(self) -> None:
        self.flushed = time.monotonic()
        ImageBuild.objects.filter(pk=self.build.pk).update(log=self.text, progress=self.progress)

    def flush(self) -> None:
        with self.lock:
            self._flush()


def perform_build(*, build_pk: int) -> ImageBuild | None:
    """Run a queued build (the worker's task). Idempotent: a build another worker already
    took, or that finished, is left alone."""
    taken = ImageBuild.objects.filter(pk=build_pk, status=ImageBuildStatus.QUEUED).update(
        status=ImageBuildStatus.RUNNING, started_at=timezone.now(), progress="starting"
    )
    if not taken:
        return None
    build = ImageBuild.objects.get(pk=build_pk)
    log = _Log(build)
    try:
        result = _run(build, log)
    except Exception as exc:  # whatever went wrong, the build says so instead of hanging
        message = getattr(exc, "message", None) or str(exc)
        if not isinstance(exc, ImageError | ProviderError | ValueError | OSError):
            logger.exception("image build %s failed", build.pk)
            message = f"{type(exc).__name__}: {exc}"
        log.line(f"failed: {message}")
        _finish(build, log, status=ImageBuildStatus.FAILED, error=message[:2000])
        return ImageBuild.objects.get(pk=build_pk)
    _register(build, log, *result)
    return ImageBuild.objects.get(pk=build_pk)


def _run(build: ImageBuild, log: _Log) -> tuple[str, int | None, list[int]]:
    provider = get_provider(build.provider)
    cache = Path(settings.SANDBOX_IMAGE_CACHE_DIR)
    with tempfile.TemporaryDirectory(prefix="image-", dir=_tmp_dir(cache)) as work:
        if build.kind == ImageBuild.KIND_OCI:
            log.step(f"copying {build.ref} with skopeo")
            docker_host = settings.SANDBOX_PROVIDER_CONFIG.get("DOCKER_HOST", "")
            source = oci.copy_to_layout(build.ref, Path(work) / "layout", docker_host=docker_host)
            log.line(
                f"{len(source.layers)} layer(s): "
                + ", ".join(
                    f"{layer.digest[:19]} ({layer.size // 1024} KiB)" for layer in source.layers
                )
            )
        else:
            spec = debian.DebianSpec(
                suite=build.suite, packages=tuple(build.packages), mirror=build.mirror
            )
            log.step(f"building debian {spec.suite} with mmdebstrap")
            rootfs = debian.build_rootfs(spec, cache, log=log.line)
            source = debian.image_source(spec, rootfs)
        log.step(f"storing the image on {build.provider}")
        try:
            result = provider.import_image(source)
        except Unsupported as exc:
            raise ImageError(exc.message) from None
    log.line(
        f"stored as {result.ref}: {(result.bytes_written or 0) // 1024} KiB written, "
        f"{result.layers_reused} layer(s) already held"
    )
    return result.ref, result.bytes_written, list(source.config.exposed_ports)


def _tmp_dir(cache: Path) -> Path:
    cache.mkdir(parents=True, exist_ok=True)
    return cache


def _register(
    build: ImageBuild, log: _Log, ref: str, written: int | None, exposed_ports: list[int]
) -> None:
    actor = Actor.system()
    ids = []
    with transaction.atomic():
        for preset_id in build.presets:
            preset = Preset.objects.get(pk=preset_id)
            snapshot = register_snapshot(
                provider=build.provider,
                preset=preset,
                ref=ref,
                team=build.team,
                actor=actor,
                created_by=build.created_by,
                label=build.label,
                activate=build.activate,
                size_bytes=written,
                exposed_ports=exposed_ports,
                data={"build": build.pk},
            )
            ids.append(snapshot.snapshot_id)
        log.line("registered " + ", ".join(ids) + (" (active)" if build.activate else ""))
        _finish(
            build,
            log,
            status=ImageBuildStatus.SUCCEEDED,
            snapshot_ids=ids,
            bytes_written=written,
        )


def _finish(build: ImageBuild, log: _Log, *, status: str, **fields) -> None:
    ImageBuild.objects.filter(pk=build.pk).update(
        status=status,
        finished_at=timezone.now(),
        log=log.text,
        progress="done" if status == ImageBuildStatus.SUCCEEDED else "failed",
        **fields,
    )
    record_event(
        actor=Actor.system(),
        action="build_image",
        outcome=Outcome.SUCCEEDED if status == ImageBuildStatus.SUCCEEDED else Outcome.FAILED,
        team=build.team,
        message=str(fields.get("error", ""))[:500],
        data={"build": build.pk, "snapshot_ids": fields.get("snapshot_ids", [])},
    )


def fail_abandoned(*, now: datetime | None = None, limit: int = 50) -> int:
    """Builds left ``running`` by a worker that died, or that outran the task timeout
    (``Q_TIMEOUT``, after which django-q2 kills the task), are marked failed (the sweep)."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=int(settings.Q_CLUSTER.get("timeout") or 1800) + 120)
    stale = list(
        ImageBuild.objects.filter(status=ImageBuildStatus.RUNNING, started_at__lt=cutoff)
        .order_by("started_at")
        .values_list("pk", flat=True)[:limit]
    )
    message = "the worker running this build stopped, or it ran longer than Q_TIMEOUT"
    done = 0
    for pk in stale:
        done += ImageBuild.objects.filter(pk=pk, status=ImageBuildStatus.RUNNING).update(
            status=ImageBuildStatus.FAILED, error=message, progress="failed", finished_at=now
        )
    return done


# --- the first start of `make run`


def default_image_spec() -> debian.DebianSpec | None:
    """The Debian image SANDBOX_DEFAULT_IMAGE asks for (None: "off")."""
    value = settings.SANDBOX_DEFAULT_IMAGE.lower()
    if value in ("", "off", "none", "no", "0"):
        return None
    kind, _, suite = value.partition(":")
    if kind != "debian":
        raise ValueError(f"SANDBOX_DEFAULT_IMAGE={value!r}: debian, debian:SUITE or off")
    return debian.DebianSpec(
        suite=suite or debian.DEFAULT_SUITE, mirror=settings.SANDBOX_DEBIAN_MIRROR
    )


def mirror_reachable(*, mirror: str, suite: str, timeout: float = 5.0) -> bool:
    if not mirror.startswith(("http://", "https://")):
        return mirror.startswith("file://")
    try:
        url = f"{mirror.rstrip('/')}/dists/{suite}/Release"
        request = urllib.request.Request(url, method="HEAD")  # noqa: S310 (http(s) only)
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            return answer.status == 200
    except OSError:
        return False


def queue_default_image(*, provider: str = "local") -> tuple[ImageBuild | None, str]:
    """Queue the default Debian image for ``provider`` once (the first `make run`), made
    active for every preset it offers when it is ready; the host-/usr version stays.
    Returns the build (None when nothing was queued) and why."""
    spec = default_image_spec()
    if spec is None:
        return None, "SANDBOX_DEFAULT_IMAGE is off"
    if provider not in enabled_provider_names():
        return None, f"the {provider} provider is not enabled"
    earlier = ImageBuild.objects.filter(provider=provider, team=None, label=DEFAULT_LABEL)
    if earlier.exclude(status=ImageBuildStatus.FAILED).exists():
        return None, "the default image was queued before"  # a failed one is tried again
    problem = debian.problem()
    if problem:
        return None, problem
    if not mirror_reachable(mirror=spec.mirror, suite=spec.suite):
        return None, f"Debian's mirror ({spec.mirror}) cannot be reached from this host"
    presets = [p.pk for p in Preset.objects.all() if not preset_refusal(p, provider)]
    if not presets:
        return None, f"no preset is offered on {provider}"
    build = request_build(
        actor=Actor.system(),
        provider=provider,
        preset_ids=presets,
        suite=spec.suite,
        packages=spec.packages,
        mirror=spec.mirror,
        label=DEFAULT_LABEL,
        activate=True,
    )
    return build, f"building a Debian {spec.suite} image for {provider} (image build {build.pk})"
