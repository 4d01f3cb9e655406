"""Everything under ``/api/``: the v1 API, cmux's start route, the schema and its docs."""

from __future__ import annotations

from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularRedocView, SpectacularSwaggerView
from rest_framework.routers import SimpleRouter

from sandboxes.api import schema  # noqa: F401 - registers the OpenAPI extensions
from sandboxes.api.views import (
    cmux,
    environments,
    pools,
    sandboxes,
    secrets,
    site,
    snapshots,
    ssh_keys,
    tokens,
)

#: /sandboxes, /sandboxes/<sandbox_id> and its actions (named sandbox-list, sandbox-detail,
#: sandbox-<action>), from the ViewSet's methods and @actions.
sandbox_routes = SimpleRouter(trailing_slash=False, use_regex_path=False)
sandbox_routes.register("sandboxes", sandboxes.SandboxViewSet, basename="sandbox")

v1 = [
    path("config", site.ConfigView.as_view(), name="config"),
    path("health", site.HealthView.as_view(), name="health"),
    *sandbox_routes.urls,
    path("secrets", secrets.SecretListView.as_view(), name="secret-list"),
    path("secrets/<str:name>", secrets.SecretDetailView.as_view(), name="secret-detail"),
    path("environments", environments.EnvironmentListView.as_view(), name="environment-list"),
    path(
        "environments/<str:environment_id>",
        environments.EnvironmentDetailView.as_view(),
        name="environment-detail",
    ),
    path(
        "environments/<str:environment_id>/start",
        environments.EnvironmentStartView.as_view(),
        name="environment-start",
    ),
    path("presets", snapshots.PresetListView.as_view(), name="preset-list"),
    path("snapshots", snapshots.SnapshotListView.as_view(), name="snapshot-list"),
    path(
        "snapshots/<str:snapshot_id>",
        snapshots.SnapshotDetailView.as_view(),
        name="snapshot-detail",
    ),
    path(
        "snapshots/<str:snapshot_id>/activate",
        snapshots.SnapshotActivateView.as_view(),
        name="snapshot-activate",
    ),
    path("pools", pools.PoolListView.as_view(), name="pool-list"),
    path("pools/<int:pool_id>", pools.PoolDetailView.as_view(), name="pool-detail"),
    path("ssh-keys", ssh_keys.SshKeyListView.as_view(), name="ssh-key-list"),
    path("ssh-keys/<int:key_id>", ssh_keys.SshKeyDetailView.as_view(), name="ssh-key-detail"),
    path("tokens", tokens.TokenListView.as_view(), name="token-list"),
    path("tokens/<int:token_id>", tokens.TokenDetailView.as_view(), name="token-detail"),
]

urlpatterns = [
    path("v1/", include((v1, "api"))),
    path("sandboxes/start", cmux.CmuxStartView.as_view(), name="cmux-start"),
    path("schema/", SpectacularAPIView.as_view(), name="api-schema"),
    path("docs/", SpectacularSwaggerView.as_view(url_name="api-schema"), name="api-docs"),
    path("redoc/", SpectacularRedocView.as_view(url_name="api-schema"), name="api-redoc"),
]
