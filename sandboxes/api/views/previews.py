"""``PATCH /api/v1/sandboxes/{id}/services/{name}``: a service's sharing level (who may
reach its preview URL; ``sandboxes/services/previews.py``). ``DELETE`` is the existing
view's, which this one extends."""

from __future__ import annotations

from drf_spectacular.utils import extend_schema
from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes.api.errors import ApiError
from sandboxes.api.views.sandboxes import CONFLICT, SandboxServiceDetailView
from sandboxes.services import previews


class SharingSerializer(serializers.Serializer):
    sharing = serializers.ChoiceField(
        choices=previews.SHARING_LEVELS,
        help_text="private: the team's writers; team: the whole team; public: anyone.",
    )


class PreviewServiceSerializer(serializers.Serializer):
    name = serializers.CharField()
    port = serializers.IntegerField()
    url = serializers.CharField()
    sharing = serializers.ChoiceField(choices=previews.SHARING_LEVELS)
    preview_url = serializers.CharField(help_text="The service at an origin of its own.")


class SandboxServiceView(SandboxServiceDetailView):
    @extend_schema(
        operation_id="sandboxes_services_share",
        summary="Set who may open the service's preview URL",
        request=SharingSerializer,
        responses={200: PreviewServiceSerializer, 409: CONFLICT},
    )
    def patch(self, request: Request, sandbox_id: str, name: str) -> Response:
        sandbox = self.get_sandbox()
        if name not in {service["name"] for service in sandbox.services}:
            raise ApiError(404, "not_found", f"no exposed service called {name[:40]!r}")
        data = self.validated(SharingSerializer)
        service = previews.set_sharing(
            sandbox=sandbox, actor=self.actor, name=name, sharing=data["sharing"]
        )
        origin = previews.preview_origin(
            sandbox.pk,
            int(service["port"]),
            scheme=request.scheme,
            web_port=int(request.get_port()),
        )
        return Response(
            {
                "name": service["name"],
                "port": service["port"],
                "url": service["url"],
                "sharing": previews.sharing_of(service),
                "preview_url": origin,
            }
        )
