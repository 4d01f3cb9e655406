"""``POST /api/sandboxes/start``: cmux's start call, for scripts written against cmux.

The body (``snapshotId``, ``ttlSeconds``, ``metadata``, optionally ``teamSlugOrId``) maps
onto create; ``repoUrl`` and ``branch`` become its repository (cloned inside the sandbox at
its first start), ``environmentId`` (an id or name) starts from a team environment, whose
recipe then also gives the snapshot unless ``snapshotId`` names one.
``snapshotId`` may be one of our snapshot ids (with or without ``_vN``) or a
provider's own image reference (a Morph ``snapshot_...`` id) that a version was imported
from. The answer carries cmux's field names; ``Idempotency-Key`` works as on create.
"""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.views.base import TeamView
from sandboxes.api.views.sandboxes import IDEMPOTENCY_HEADER
from sandboxes.models import Environment, Sandbox
from sandboxes.services import environments, lifecycle, snapshots


def _service_url(sandbox: Sandbox, name: str) -> str | None:
    return next((svc["url"] for svc in sandbox.services if svc["name"] == name), None)


class CmuxStartView(TeamView):
    serializer_class = s.CmuxStartedSerializer
    throttle_kind = "create"

    def snapshot_id(self, given: str) -> str:
        """Our id as it is, or the version imported from a provider image reference."""
        if snapshots.is_snapshot_id(given):
            return given
        version = selectors.snapshot_by_provider_ref(team=self.team, ref=given)
        return version.snapshot_id if version is not None else given

    def start_environment(self, data: dict, *, repo: dict | None, key: str) -> Sandbox:
        try:
            environment = selectors.get_environment(team=self.team, ref=data["environmentId"])
        except Environment.DoesNotExist:
            problem = "no such environment in your team"
            raise ApiError(
                400, "invalid", f"environmentId: {problem}", fields={"environmentId": [problem]}
            ) from None
        overrides: dict = {}
        if repo is not None:
            overrides["repo"] = repo
        elif data.get("branch"):
            overrides["branch"] = data["branch"]
        for field, ours in (("ttlSeconds", "ttl_seconds"), ("metadata", "metadata")):
            if field in data:
                overrides[ours] = data[field]
        if data.get("snapshotId"):
            # A snapshot named beside the environment wins: an environment at another image.
            environment.snapshot_id = self.snapshot_id(data["snapshotId"])
            environment.preset = None
            environment.preset_id = None
        return environments.start_environment(
            environment=environment, actor=self.actor, idempotency_key=key, overrides=overrides
        )

    @extend_schema(
        operation_id="cmux_sandboxes_start",
        summary="cmux compatibility: start a sandbox from a snapshot (maps onto create)",
        request=s.CmuxStartSerializer,
        parameters=[IDEMPOTENCY_HEADER],
        responses={202: s.CmuxStartedSerializer},
    )
    def post(self, request: Request) -> Response:
        data = self.validated(s.CmuxStartSerializer)
        team_ref = data.get("teamSlugOrId")
        if team_ref and team_ref not in (self.team.slug, str(self.team.pk)):
            raise ApiError(404, "not_found", "no such team for your credentials")
        key = request.headers.get("Idempotency-Key", "")
        repo = None
        if data.get("repoUrl"):
            repo = {"url": data["repoUrl"], "branch": data.get("branch", "")}
        elif data.get("branch") and not data.get("environmentId"):
            raise ApiError(400, "invalid", "branch: give repoUrl", fields={"branch": ["no repo"]})
        # A retry with the same Idempotency-Key answers the first sandbox (409 if it asks
        # for something else): lifecycle.replayed_create, as on create.
        if data.get("environmentId"):
            sandbox = self.start_environment(data, repo=repo, key=key)
        else:
            if not data.get("snapshotId"):
                problem = "required (or environmentId)"
                raise ApiError(
                    400,
                    "invalid",
                    f"snapshotId: {problem}",
                    fields={"snapshotId": [problem]},
                )
            sandbox = lifecycle.create_sandbox(
                team=self.team,
                actor=self.actor,
                snapshot_id=self.snapshot_id(data["snapshotId"]),
                ttl_seconds=data.get("ttlSeconds"),
                metadata=data.get("metadata"),
                idempotency_key=key,
                repo=repo,
            )
        body = {
            "instanceId": sandbox.pk,
            "provider": sandbox.provider,
            "status": sandbox.status,
            "snapshotId": sandbox.snapshot.snapshot_id if sandbox.snapshot_id else "",
            "vscodeUrl": _service_url(sandbox, "vscode"),
            "workerUrl": _service_url(sandbox, "worker"),
        }
        return Response(s.CmuxStartedSerializer(body).data, status=status.HTTP_202_ACCEPTED)
