"""``/api/v1/sandboxes``: list, create, read (``?wait``), change, delete, and the actions,
in one ViewSet (``SandboxViewSet``) that the router in ``sandboxes/api/urls.py`` routes."""

from __future__ import annotations

import time
from typing import Any

from django.urls import reverse
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema
from rest_framework import mixins, status
from rest_framework.decorators import action
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.viewsets import ViewSetMixin

from sandboxes import db_pool, selectors
from sandboxes.api import serializers as s
from sandboxes.api.errors import ApiError
from sandboxes.api.filtering import FilterBackend
from sandboxes.api.views import previews as preview_views
from sandboxes.api.views.base import TeamView
from sandboxes.filters import EventFilter, SandboxFilter
from sandboxes.models import Sandbox, SandboxEvent, TtlAction
from sandboxes.services import interactive, lifecycle, long_calls
from sandboxes.services import ssh as ssh_service
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
FORBIDDEN = OpenApiResponse(s.ErrorSerializer, description="Your role cannot do this.")


def sandbox_body(sandbox: Sandbox) -> dict[str, Any]:
    return s.SandboxSerializer(sandbox).data


def accepted(sandbox: Sandbox, **headers: str) -> Response:
    location = reverse("api:sandbox-detail", kwargs={"sandbox_id": sandbox.pk})
    return Response(
        sandbox_body(sandbox),
        status=status.HTTP_202_ACCEPTED,
        headers={"Location": location, **headers},
    )


#: The answers a lifecycle action may give besides 202.
ACTION_CONFLICT = OpenApiResponse(
    s.ErrorSerializer,
    description="Not possible in the current status (illegal_transition) or "
    "not offered by the provider (capability_missing, names the capability).",
)


def lifecycle_action(operation: str, summary: str):
    """The schema of start, stop, pause, resume and hibernate: no body, 202 with the sandbox."""
    return extend_schema(
        operation_id=f"sandboxes_{operation}",
        summary=summary,
        request=s.NoBodySerializer,
        responses={202: s.SandboxSerializer, 409: ACTION_CONFLICT},
    )


# /api/v1/sandboxes: list and create; one sandbox read (?wait), changed and deleted; and its
# actions (@action), routed by sandboxes/api/urls.py's router.
class SandboxViewSet(ViewSetMixin, mixins.ListModelMixin, TeamView):
    """The caller's team's sandboxes. Another team's sandbox is simply not found."""

    serializer_class = s.SandboxSerializer
    filter_backends = [FilterBackend]
    filterset_class = SandboxFilter
    lookup_field = "sandbox_id"
    lookup_value_converter = "str"

    @property
    def throttle_kind(self) -> str:
        """Creating is throttled on its own (``TeamCreateThrottle``); the rest as the team."""
        return "create" if self.action == "create" else "team"

    @property
    def page_rows(self):
        """The list's pagination counts the filtered sandboxes and fetches only the page
        as rows (``RowPaginator``); other lists page model objects."""
        return selectors.sandbox_rows if self.action == "list" else None

    def get_queryset(self):
        if self.action == "events":
            if self.schema_only:
                return SandboxEvent.objects.none()
            return selectors.sandbox_events(sandbox=self.get_sandbox())
        if self.schema_only:
            return Sandbox.objects.none()
        wanted = self.request.query_params.getlist("status")
        return selectors.sandboxes_for_team(team=self.team, include_deleted="deleted" in wanted)

    @extend_schema(
        operation_id="sandboxes_list",
        summary="List your team's sandboxes (deleted ones only when asked for)",
    )
    def list(self, request: Request) -> Response:
        return super().list(request)

    @extend_schema(
        operation_id="sandboxes_create",
        summary="Create a sandbox (answers 202 with it in starting)",
        request=s.SandboxCreateSerializer,
        parameters=[IDEMPOTENCY_HEADER, LOCATION, REPLAYED],
        responses={202: s.SandboxSerializer, 409: CONFLICT},
    )
    def create(self, request: Request) -> Response:
        data = self.validated(s.SandboxCreateSerializer)
        key = request.headers.get("Idempotency-Key", "")
        asked = {
            "preset_id": data.get("preset"),
            "provider": data.get("provider"),
            "snapshot_id": data.get("snapshot_id"),
            "name": data.get("name", ""),
            "ttl_seconds": data.get("ttl_seconds"),
            "ttl_action": data.get("ttl_action", TtlAction.STOP),
            "idle_timeout_seconds": data.get("idle_timeout_seconds", lifecycle.TEAM_DEFAULT),
            "delete_parked_after_seconds": data.get(
                "delete_parked_after_seconds", lifecycle.TEAM_DEFAULT
            ),
            "metadata": data.get("metadata"),
            "network_policy": data.get("network_policy"),
            "network_allow": data.get("network_allow"),
            "env": data.get("env"),
            "secrets": data.get("secrets"),
        }
        existing = lifecycle.replayed_create(team=self.team, idempotency_key=key, asked=asked)
        if existing is not None:
            return accepted(existing, **{"Idempotent-Replayed": "true"})
        sandbox = lifecycle.create_sandbox(
            team=self.team,
            actor=self.actor,
            idempotency_key=key,
            repo=data.get("repo"),
            setup=data.get("setup", ""),
            **asked,
        )
        return accepted(sandbox)

    def wait_until_settled(self, seconds: int) -> None:
        """Poll only the status column, outside any transaction, until settled or timed out."""
        deadline = time.monotonic() + seconds
        while True:
            current = selectors.sandbox_status(team=self.team, sandbox_id=self.kwargs["sandbox_id"])
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
    def retrieve(self, request: Request, sandbox_id: str) -> Response:
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
    def partial_update(self, request: Request, sandbox_id: str) -> Response:
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
    def destroy(self, request: Request, sandbox_id: str) -> Response:
        return accepted(lifecycle.delete_sandbox(sandbox=self.get_sandbox(), actor=self.actor))

    def _lifecycle(self, operation: str) -> Response:
        sandbox = self.get_sandbox()
        self.validated(s.NoBodySerializer)
        call = getattr(lifecycle, f"{operation}_sandbox")
        return accepted(call(sandbox=sandbox, actor=self.actor))

    @lifecycle_action("start", "Start a stopped or failed sandbox")
    @action(detail=True, methods=["post"])
    def start(self, request: Request, sandbox_id: str) -> Response:
        return self._lifecycle("start")

    @lifecycle_action("stop", "Stop a sandbox (its disk is kept)")
    @action(detail=True, methods=["post"])
    def stop(self, request: Request, sandbox_id: str) -> Response:
        return self._lifecycle("stop")

    @lifecycle_action("pause", "Pause a running sandbox (RAM kept)")
    @action(detail=True, methods=["post"])
    def pause(self, request: Request, sandbox_id: str) -> Response:
        return self._lifecycle("pause")

    @lifecycle_action("resume", "Resume a paused or hibernated sandbox")
    @action(detail=True, methods=["post"])
    def resume(self, request: Request, sandbox_id: str) -> Response:
        return self._lifecycle("resume")

    @lifecycle_action("hibernate", "Hibernate a sandbox (RAM to disk)")
    @action(detail=True, methods=["post"])
    def hibernate(self, request: Request, sandbox_id: str) -> Response:
        return self._lifecycle("hibernate")

    @extend_schema(
        operation_id="sandboxes_exec",
        summary="Run a command in a running sandbox and answer its exit code and output",
        request=s.ExecSerializer,
        responses={200: s.ExecResultSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    @action(detail=True, methods=["post"], serializer_class=s.ExecResultSerializer)
    def exec(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.ExecSerializer)
        result = interactive.exec_command(
            sandbox=sandbox,
            actor=self.actor,
            command=data["command"],
            timeout_seconds=data["timeout_seconds"],
        )
        return Response(s.ExecResultSerializer(result).data)

    @extend_schema(
        operation_id="sandboxes_snapshot",
        summary="Take a snapshot: answers 202 with the new version (status creating)",
        request=s.TakeSnapshotSerializer,
        responses={202: s.SnapshotSerializer, 409: CONFLICT},
    )
    @action(detail=True, methods=["post"], serializer_class=s.SnapshotSerializer)
    def snapshot(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.TakeSnapshotSerializer)
        snapshot = take_snapshot(sandbox=sandbox, actor=self.actor, label=data.get("label", ""))
        body = s.SnapshotSerializer(snapshot, context={"active_ids": set()}).data
        return Response(body, status=status.HTTP_202_ACCEPTED)

    @extend_schema(
        operation_id="sandboxes_services_expose",
        summary="Expose a port of the sandbox as an HTTP service; answers its URL",
        request=s.ExposeServiceSerializer,
        responses={201: s.ServiceSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    @action(detail=True, methods=["post"], serializer_class=s.ServiceSerializer)
    def services(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.ExposeServiceSerializer)
        service = interactive.expose_service(
            sandbox=sandbox, actor=self.actor, name=data["name"], port=data["port"]
        )
        return Response(s.ServiceSerializer(service).data, status=status.HTTP_201_CREATED)

    @extend_schema(
        operation_id="sandboxes_services_hide",
        summary="Stop exposing an HTTP service",
        request=None,
        responses={204: None, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    @action(
        detail=True,
        methods=["delete"],
        url_path="services/<str:name>",
        url_name="service",
        serializer_class=s.ServiceSerializer,
    )
    def service(self, request: Request, sandbox_id: str, name: str) -> Response:
        sandbox = self.exposing(name)
        interactive.hide_service(sandbox=sandbox, actor=self.actor, name=name)
        return Response(status=status.HTTP_204_NO_CONTENT)

    @extend_schema(
        operation_id="sandboxes_services_share",
        summary="Set who may open the service's preview URL",
        request=preview_views.SharingSerializer,
        responses={200: preview_views.PreviewServiceSerializer, 409: CONFLICT},
    )
    @service.mapping.patch
    def share_service(self, request: Request, sandbox_id: str, name: str) -> Response:
        sandbox = self.exposing(name)
        data = self.validated(preview_views.SharingSerializer)
        return preview_views.share(
            request, sandbox=sandbox, actor=self.actor, name=name, sharing=data["sharing"]
        )

    def exposing(self, name: str) -> Sandbox:
        """The sandbox, which must expose a service called ``name`` (404 otherwise)."""
        sandbox = self.get_sandbox()
        if name not in {service["name"] for service in sandbox.services}:
            raise ApiError(404, "not_found", f"no exposed service called {name[:40]!r}")
        return sandbox

    @extend_schema(
        operation_id="sandboxes_wake_on",
        summary="Choose whether HTTP or SSH traffic wakes the sandbox when paused",
        request=s.WakeOnSerializer,
        responses={200: s.SandboxSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    @action(detail=True, methods=["put"], url_path="wake-on", url_name="wake-on")
    def wake_on(self, request: Request, sandbox_id: str) -> Response:
        sandbox = self.get_sandbox()
        data = self.validated(s.WakeOnSerializer)
        sandbox = interactive.set_wake_on(
            sandbox=sandbox, actor=self.actor, http=data["http"], ssh=data["ssh"]
        )
        return Response(sandbox_body(sandbox))

    @extend_schema(
        operation_id="sandboxes_events",
        summary="The sandbox's audit trail, oldest first",
        responses=s.EventSerializer(many=True),  # a list: paginated and filtered
    )
    @action(
        detail=True,
        methods=["get"],
        serializer_class=s.EventSerializer,
        filterset_class=EventFilter,
    )
    def events(self, request: Request, sandbox_id: str) -> Response:
        return self.list(request)

    @extend_schema(
        operation_id="sandboxes_ssh",
        summary="How to connect over SSH (409 naming supports_ssh where not offered)",
        responses={200: s.SshInfoSerializer, 409: CONFLICT, 502: PROVIDER_DOWN},
    )
    @action(detail=True, methods=["get"], serializer_class=s.SshInfoSerializer)
    def ssh(self, request: Request, sandbox_id: str) -> Response:
        info = interactive.ssh_access(sandbox=self.get_sandbox(), actor=self.actor)
        return Response(s.SshInfoSerializer(info).data)

    @extend_schema(
        operation_id="sandboxes_ssh_token",
        summary="A short-lived SSH login for the gateway: ssh -p <port> <token>@<host>",
        request=None,
        responses={201: s.SshTokenSerializer, 403: FORBIDDEN},
    )
    @ssh.mapping.post
    def ssh_token(self, request: Request, sandbox_id: str) -> Response:
        issued = ssh_service.issue_token(sandbox=self.get_sandbox(), actor=self.actor)
        host, port = ssh_service.public_address()
        body = {
            "token": issued.token,
            "expires_at": issued.expires_at,
            "host": host,
            "port": port,
            "command": issued.command,
        }
        return Response(s.SshTokenSerializer(body).data, status=status.HTTP_201_CREATED)
