"""``/api/v1/sandboxes``: list, create, read (``?wait``), change, delete, and the actions."""

from __future__ import annotations

import time
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes import db_pool, selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.filtering import FilterBackend
from sandboxes.api.views.base import TeamView
from sandboxes.filters import EventFilter, SandboxFilter
from sandboxes.models import Sandbox, SandboxEvent, TtlAction
from sandboxes.services import interactive, lifecycle, long_calls
from sandboxes.services.snapshots import take_snapshot
from sandboxes.states import is_transitional

#: How often ``?wait`` looks at the status column.
WAIT_POLL_SECONDS = 0.2

IDEMPOTENCY_HEADER = OpenApiParameter(
    "Idempotency-Key",
    str,
    OpenApiParameter.HEADER,
    required=False,
    description=(
        "Up to 200 characters. A retry with the same key answers the sandbox the first "
        "request created (202, header Idempotent-Replayed: true) instead of a second one."
    ),
)
LOCATION = OpenApiParameter(
    "Location",
    str,
    OpenApiParameter.HEADER,
    response=[202],
    description="The sandbox's URL.",
)
REPLAYED = OpenApiParameter(
    "Idempotent-Replayed",
    str,
    OpenApiParameter.HEADER,
    response=[202],
    enum=["true"],
    description="Present when a retried create answered the first request's sandbox.",
)
CONFLICT = OpenApiResponse(s.ErrorSerializer, description="Not possible in the current state.")
PROVIDER_DOWN = OpenApiResponse(s.ErrorSerializer, description="The provider failed.")


def sandbox_body(sandbox: Sandbox) -> dict[str, Any]:
    return s.SandboxSerializer(sandbox).data


def accepted(sandbox: Sandbox, **headers: str) -> Response:
    location = reverse("api:sandbox-detail", kwargs={"sandbox_id": sandbox.pk})
    return Response(
        sandbox_body(sandbox),
        status=status.HTTP_202_ACCEPTED,
        headers={"Location": location, **headers},
    )


def idempotency_mismatch(existing: Sandbox, data: dict[str, Any]) -> list[str]:
    """The fields of a retried create that differ from the sandbox the key made first."""
    given = {
        "name": (data.get("name") or "").strip(),
        "metadata": data.get("metadata") or {},
        "ttl_seconds": data.get("ttl_seconds"),
        "ttl_action": data.get("ttl_action", TtlAction.STOP),
    }
    # Left out, these took the team's defaults (or nothing): only a value given can differ.
    for name in ("idle_timeout_seconds", "delete_parked_after_seconds", "env"):
        if name in data:
            given[name] = data[name]
    differing = [name for name, value in given.items() if getattr(existing, name) != value]
    if "secrets" in data and list(dict.fromkeys(data["secrets"])) != existing.secret_names:
        differing.append("secrets")
    if data.get("network_policy", "") != existing.network_policy:
        differing.append("network_policy")
    if data.get("preset") and data["preset"] != existing.preset_id:
        differing.append("preset")
    if data.get("provider") and data["provider"] != existing.provider:
        differing.append("provider")
    wanted = data.get("snapshot_id")
    made = existing.snapshot.snapshot_id if existing.snapshot_id else ""
    if wanted and wanted != made and made.rsplit("_v", 1)[0] != wanted:
        differing.append("snapshot_id")
    return differing


class SandboxListView(mixins.ListModelMixin, TeamView):
    serializer_class = s.SandboxSerializer
    filter_backends = [FilterBackend]
    filterset_class = SandboxFilter
    throttle_kind = "create"
    #: The pagination counts the filtered sandboxes and fetches only the page as rows.
    page_rows = staticmethod(selectors.sandbox_rows)

    def get_queryset(self):
        if self.schema_only:
            return Sandbox.objects.none()
        wanted = self.request.query_params.getlist("status")
        return selectors.sandboxes_for_team(self.team, include_deleted="deleted" in wanted)

    @extend_schema(
        operation_id="sandboxes_list",
        summary="List your team's sandboxes (deleted ones only when asked for)",
    )
    def get(self, request: Request) -> Response:
        return self.list(request)

    @extend_schema(
        operation_id="sandboxes_create",
        summary="Create a sandbox (answers 202 with it in starting)",
        request=s.SandboxCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER, LOCATION, REPLAYED],
        responses={202: s.SandboxSerializer, 409: CONFLICT},
    )
    def post(self, request: Request) -> Response:
        data = self.validated(s.SandboxCreateSerializer)
        key = request.headers.get("Idempotency-Key", "")
        existing = selectors.sandbox_by_idempotency_key(self.team, key)
        if existing is not None:
            differing = idempotency_mismatch(existing, data)
            if differing:
                raise ApiError(
                    409,
                    "idempotency_key_reused",
                    "this Idempotency-Key was used for a different request",
                    fields={field: ["differs from the first request"] for field in differing},
                )
            return accepted(existing, **{"Idempotent-Replayed": "true"})
        sandbox = lifecycle.create_sandbox(
            team=self.team,
            actor=self.actor,
            preset_id=data.get("preset"),
            provider=data.get("provider"),
            snapshot_id=data.get("snapshot_id"),
            name=data.get("name", ""),
            ttl_seconds=data.get("ttl_seconds"),
            ttl_action=data.get("ttl_action", TtlAction.STOP),
            idle_timeout_seconds=data.get("idle_timeout_seconds", lifecycle.TEAM_DEFAULT),
            delete_parked_after_seconds=data.get(
                "delete_parked_after_seconds", lifecycle.TEAM_DEFAULT
            ),
            metadata=data.get("metadata"),
            idempotency_key=key,
            network_policy=data.get("network_policy"),
            network_allow=data.get("network_allow"),
            env=data.get("env"),
            secrets=data.get("secrets"),
            repo=data.get("repo"),
            setup=data.get("setup", ""),
        )
        return accepted(sandbox)


class SandboxDetailView(TeamView):
    serializer_class = s.SandboxSerializer

    def wait_until_settled(self, seconds: int) -> None:
        """Poll only the status column, outside any transaction, until settled or timed out."""
        deadline = time.monotonic() + seconds
        while True:
            current = selectors.sandbox_status(self.team, self.kwargs["sandbox_id"])
            if current is None or not is_transitional(current):
                return
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            db_pool.give_back()  # not held while sleeping: each poll borrows one
            time.sleep(min(WAIT_POLL_SECONDS, remaining))

    @extend_schema(
        operation_id="sandboxes_get",
        summary="Read a sandbox; ?wait=N waits up to N s (max 60) for a settled status",
        parameters=[s.WaitQuerySerializer],
    )
    def get(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()  # not found comes first, before any other complaint
        query = s.WaitQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        wait = query.validated_data.get("wait")
        if wait and sandbox.is_transitional:
            # A long call (it holds a thread for up to `wait` s): one of the team's slots.
            with long_calls.held(team=self.team, kind="wait", seconds=wait):
                self.wait_until_settled(wait)
            sandbox = self.get_sandbox()
        return Response(sandbox_body(sandbox))

    @extend_schema(
        operation_id="sandboxes_update",
        summary="Change name, TTL, idle timeout or metadata (only the fields given)",
        request=s.SandboxUpdateSerializer,
        responses={200: s.SandboxSerializer, 409: CONFLICT},
    )
    def patch(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.SandboxUpdateSerializer)
        sandbox = interactive.update_sandbox_settings(sandbox=sandbox, actor=self.actor, **data)
        return Response(sandbox_body(sandbox))

    @extend_schema(
        operation_id="sandboxes_delete",
        summary="Delete a sandbox (answers 202 with it in deleting)",
        request=None,
        responses={202: s.SandboxSerializer, 409: CONFLICT},
    )
    def delete(self, request: Request, sandbox_id: str) -> Response:
        return accepted(lifecycle.delete_sandbox(sandbox=self.get_sandbox(), actor=self.actor))


class SandboxActionView(TeamView):
    """start, stop, pause, resume, hibernate: 202 with the sandbox in its new status."""

    serializer_class = s.SandboxSerializer
    operation = ""

    def post(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        self.validated(s.NoBodySerializer)
        call = getattr(lifecycle, f"{self.operation}_sandbox")
        return accepted(call(sandbox=sandbox, actor=self.actor))


def action_view(operation: str, summary: str) -> type[SandboxActionView]:
    """One view class per action, so each has its own entry in the OpenAPI schema."""

    @extend_schema(
        operation_id=f"sandboxes_{operation}",
        summary=summary,
        request=s.NoBodySerializer,
        responses={
            202: s.SandboxSerializer,
            409: OpenApiResponse(
                s.ErrorSerializer,
                description="Not possible in the current status (illegal_transition) or "
                "not offered by the provider (capability_missing, names the capability).",
            ),
        },
    )
    def post(self, request: Request, sandbox_id: str) -> Response:
        return SandboxActionView.post(self, request, sandbox_id)

    name = f"Sandbox{operation.title()}View"
    return type(name, (SandboxActionView,), {"operation": operation, "post": post})


ACTION_VIEWS = {
    "start": action_view("start", "Start a stopped or failed sandbox"),
    "stop": action_view("stop", "Stop a sandbox (its disk is kept)"),
    "pause": action_view("pause", "Pause a running sandbox (RAM kept)"),
    "resume": action_view("resume", "Resume a paused or hibernated sandbox"),
    "hibernate": action_view("hibernate", "Hibernate a sandbox (RAM to disk)"),
}


class SandboxExecView(TeamView):
    serializer_class = s.ExecResultSerializer

    @extend_schema(
        operation_id="sandboxes_exec",
        summary="Run a command in a running sandbox and answer its exit code and output",
        request=s.ExecSerializer,
        responses={200: s.ExecResultSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    def post(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.ExecSerializer)
        result = interactive.exec_command(
            sandbox=sandbox,
            actor=self.actor,
            command=data["command"],
            timeout_seconds=data["timeout_seconds"],
        )
        return Response(s.ExecResultSerializer(result).data)


class SandboxSnapshotView(TeamView):
    serializer_class = s.SnapshotSerializer

    @extend_schema(
        operation_id="sandboxes_snapshot",
        summary="Take a snapshot: answers 202 with the new version (status creating)",
        request=s.TakeSnapshotSerializer,
        responses={202: s.SnapshotSerializer, 409: CONFLICT},
    )
    def post(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.TakeSnapshotSerializer)
        snapshot = take_snapshot(sandbox=sandbox, actor=self.actor, label=data.get("label", ""))
        body = s.SnapshotSerializer(snapshot, context={"active_ids": set()}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)


class SandboxServicesView(TeamView):
    serializer_class = s.ServiceSerializer

    @extend_schema(
        operation_id="sandboxes_services_expose",
        summary="Expose a port of the sandbox as an HTTP service; answers its URL",
        request=s.ExposeServiceSerializer,
        responses={201: s.ServiceSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    def post(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.ExposeServiceSerializer)
        service = interactive.expose_service(
            sandbox=sandbox, actor=self.actor, name=data["name"], port=data["port"]
        )
        return Response(s.ServiceSerializer(service).data, status=status.HTTP_201_CREATED)


class SandboxServiceDetailView(TeamView):
    serializer_class = s.ServiceSerializer

    @extend_schema(
        operation_id="sandboxes_services_hide",
        summary="Stop exposing an HTTP service",
        request=None,
        responses={204: None, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    def delete(self, request: Request, sandbox_id: str, name: str) -> Response:
        sandbox = self.get_sandbox()
        if name not in {service["name"] for service in sandbox.services}:
            raise ApiError(404, "not_found", f"no exposed service called {name[:40]!r}")
        interactive.hide_service(sandbox=sandbox, actor=self.actor, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)


class SandboxWakeOnView(TeamView):
    serializer_class = s.SandboxSerializer

    @extend_schema(
        operation_id="sandboxes_wake_on",
        summary="Choose whether HTTP or SSH traffic wakes the sandbox when paused",
        request=s.WakeOnSerializer,
        responses={200: s.SandboxSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    def put(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.WakeOnSerializer)
        sandbox = interactive.set_wake_on(
            sandbox=sandbox, actor=self.actor, http=data["http"], ssh=data["ssh"]
        )
        return Response(sandbox_body(sandbox))


class SandboxEventsView(mixins.ListModelMixin, TeamView):
    serializer_class = s.EventSerializer
    filter_backends = [FilterBackend]
    filterset_class = EventFilter

    def get_queryset(self):
        if self.schema_only:
            return SandboxEvent.objects.none()
        return selectors.sandbox_events(self.get_sandbox())

    @extend_schema(
        operation_id="sandboxes_events", summary="The sandbox's audit trail, oldest first"
    )
    def get(self, request: Request, sandbox_id: str) -> Response:
        return self.list(request)


class SandboxSshView(TeamView):
    serializer_class = s.SshInfoSerializer

    @extend_schema(
        operation_id="sandboxes_ssh",
        summary="How to connect over SSH (409 naming supports_ssh where not offered)",
        responses={200: s.SshInfoSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    def get(self, request: Request, sandbox_id: str) -> Response:
        info = interactive.ssh_access(sandbox=self.get_sandbox(), actor=self.actor)
        return Response(s.SshInfoSerializer(info).data)
