"""Dashboard URLs. Every object URL is looked up within the current team (404 otherwise);
tests/dashboard/test_isolation.py walks this list, so a new page is covered automatically."""

from django.urls import path
from django.views.generic import RedirectView

from sandboxes.views import (
    detail,
    environments,
    pages,
    pools,
    previews,
    sandboxes,
    secrets,
    snapshots,
    ssh_keys,
    tokens,
)

SANDBOX = "sandboxes/<str:sandbox_id>/"
SNAPSHOT = "snapshots/<str:snapshot_id>/"

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="sandbox-list"), name="home"),
    path("sandboxes/", sandboxes.sandbox_list, name="sandbox-list"),
    path("sandboxes/new/", sandboxes.sandbox_new, name="sandbox-new"),
    path("sandboxes/bulk/", sandboxes.sandbox_bulk, name="sandbox-bulk"),
    path(SANDBOX, sandboxes.sandbox_detail, name="sandbox-detail"),
    path(SANDBOX + "status/", sandboxes.sandbox_status, name="sandbox-status"),
    path(SANDBOX + "do/<str:action>/", sandboxes.sandbox_action, name="sandbox-action"),
    path(SANDBOX + "settings/", detail.sandbox_settings, name="sandbox-settings"),
    path(SANDBOX + "services/", detail.sandbox_service_add, name="sandbox-service-add"),
    path(
        SANDBOX + "services/<str:service>/remove/",
        detail.sandbox_service_hide,
        name="sandbox-service-hide",
    ),
    path("preview/<str:sandbox_id>/<int:port>/", previews.open_preview, name="preview-open"),
    path(
        SANDBOX + "services/<str:service>/sharing/",
        previews.service_sharing,
        name="sandbox-service-sharing",
    ),
    path(SANDBOX + "wake-on/", detail.sandbox_wake_on, name="sandbox-wake-on"),
    path(SANDBOX + "exec/", detail.sandbox_exec, name="sandbox-exec"),
    path(SANDBOX + "snapshot/", detail.sandbox_snapshot, name="sandbox-snapshot"),
    path(SANDBOX + "snapshots/", detail.sandbox_snapshots_taken, name="sandbox-snapshots"),
    path(SANDBOX + "metrics/", detail.sandbox_metrics, name="sandbox-metrics"),
    path("snapshots/", snapshots.snapshot_browser, name="snapshot-browser"),
    # The pages were first published under /versions/: old links and bookmarks still work.
    path(
        "versions/<path:rest>",
        RedirectView.as_view(url="/snapshots/%(rest)s", query_string=True),
    ),
    path("versions/", RedirectView.as_view(pattern_name="snapshot-browser", query_string=True)),
    path("snapshots/compare/", snapshots.snapshot_compare_pick, name="snapshot-compare-pick"),
    path(SNAPSHOT, snapshots.snapshot_detail, name="snapshot-detail"),
    path(SNAPSHOT + "activate/", snapshots.snapshot_activate, name="snapshot-activate"),
    path(SNAPSHOT + "delete/", snapshots.snapshot_delete, name="snapshot-delete"),
    path(
        SNAPSHOT + "compare/<str:other_id>/",
        snapshots.snapshot_compare,
        name="snapshot-compare",
    ),
    path("presets/", pages.preset_list, name="preset-list"),
    path("providers/", pages.provider_health, name="provider-health"),
    path("audit/", pages.audit_log, name="audit-log"),
    path("tokens/", tokens.token_list, name="token-list"),
    path("ssh-keys/", ssh_keys.ssh_key_list, name="ssh-key-list"),
    path("ssh-keys/<int:key_id>/delete/", ssh_keys.ssh_key_delete, name="ssh-key-delete"),
    path("secrets/", secrets.secret_list, name="secret-list"),
    path("pools/", pools.pool_list, name="pool-list"),
    path("pools/<int:pool_id>/toggle/", pools.pool_toggle, name="pool-toggle"),
    path("pools/<int:pool_id>/delete/", pools.pool_delete, name="pool-delete"),
    path("environments/", environments.environment_list, name="environment-list"),
    path(
        "environments/<int:environment_id>/", environments.environment_edit, name="environment-edit"
    ),
    path(
        "environments/<int:environment_id>/start/",
        environments.environment_start,
        name="environment-start",
    ),
    path(
        "environments/<int:environment_id>/delete/",
        environments.environment_delete,
        name="environment-delete",
    ),
    path("secrets/<str:name>/delete/", secrets.secret_delete, name="secret-delete"),
    path("tokens/<int:token_id>/revoke/", tokens.token_revoke, name="token-revoke"),
    path("team/", pages.team_switch, name="team-switch"),
]
