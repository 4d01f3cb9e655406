"""``PATCH /api/v1/sandboxes/{id}/services/{name}``: a service's sharing level (who may
reach its preview URL; ``sandboxes/services/previews.py``). ``SandboxViewSet`` routes it
beside the service's ``DELETE`` (``share_service``)."""

from __future__ import annotations

from rest_framework import serializers
from rest_framework.request import Request
from rest_framework.response import Response

from sandboxes.models import Sandbox
from sandboxes.services import previews
from sandboxes.services.actors import Actor


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


def share(request: Request, *, sandbox: Sandbox, actor: Actor, name: str, sharing: str) -> Response:
    """Set the service's sharing level; answers it with its preview URL."""
    service = previews.set_sharing(sandbox=sandbox, actor=actor, name=name, sharing=sharing)
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
