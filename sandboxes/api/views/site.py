"""``/api/v1/config`` (what this site offers your team) and ``/api/v1/health`` (providers)."""

from __future__ import annotations

from dataclasses import asdict

from drf_spectacular.utils import extend_schema
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings

from sandboxes import selectors
from sandboxes.api import serializers as s
from sandboxes.api.views.base import TeamView
from sandboxes.services import backends, quotas, workers
from sandboxes.services.interactive import MAX_EXEC_TIMEOUT
from sandboxes.services.validation import (
    METADATA_MAX_KEY,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE,
)


class ConfigView(TeamView):
    serializer_class = s.ConfigSerializer

    def providers(self) -> list[dict]:
        default = backends.default_provider()
        out = []
        for name in backends.enabled_provider_names():
            caps = backends.provider_capabilities(name)
            missing = [c for c in caps.names() if not caps.supports(c)]
            out.append(
                {
                    "name": name,
                    "default": name == default,
                    "capabilities": caps.as_dict(),
                    "reasons": {c: caps.reason(c) for c in missing},
                }
            )
        return out

    def team_info(self) -> dict:
        usage = quotas.team_usage(self.team)
        return {
            "slug": self.team.slug,
            "name": self.team.name,
            "role": self.principal.role,
            "quotas": quotas.team_limits(self.team),
            "usage": {
                "sandboxes": usage.sandboxes,
                "vcpus": usage.vcpus,
                "memory_mb": usage.memory_mb,
            },
        }

    @extend_schema(
        operation_id="config_get",
        summary="Enabled providers and their capabilities, presets, your team, limits",
    )
    def get(self, request: Request) -> Response:
        rates = api_settings.DEFAULT_THROTTLE_RATES
        enabled = backends.enabled_provider_names()
        body = {
            "default_provider": backends.default_provider(),
            "providers": self.providers(),
            "presets": list(selectors.presets()),
            "team": self.team_info(),
            "limits": {
                "max_wait_seconds": s.MAX_WAIT_SECONDS,
                "max_exec_timeout_seconds": MAX_EXEC_TIMEOUT,
                "metadata_max_keys": METADATA_MAX_KEYS,
                "metadata_max_key_length": METADATA_MAX_KEY,
                "metadata_max_value_length": METADATA_MAX_VALUE,
                "rate": rates.get("team") or None,
                "create_rate": rates.get("team_create") or None,
            },
        }
        return Response(s.ConfigSerializer(body, context={"enabled_providers": enabled}).data)


class HealthView(TeamView):
    serializer_class = s.HealthSerializer

    @extend_schema(
        operation_id="health_get",
        summary=(
            "Whether each enabled provider is reachable (and how fast), and whether the "
            "background worker runs tasks"
        ),
    )
    def get(self, request: Request) -> Response:
        providers = [
            {
                "name": state.name,
                "reachable": state.health.reachable,
                "latency_ms": state.health.latency_ms,
                "detail": state.health.detail,
                "capacity": state.capacity.as_dict() if state.capacity is not None else None,
            }
            for state in backends.provider_states()
        ]
        background = asdict(workers.liveness())
        body = {
            "ok": all(p["reachable"] for p in providers) and background["ok"],
            "providers": providers,
            "background": background,
        }
        return Response(s.HealthSerializer(body).data)
