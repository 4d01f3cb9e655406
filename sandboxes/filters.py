"""FilterSets shared by the dashboard and the API: one definition of every list filter."""

from __future__ import annotations

import django_filters
from django.db.models import Q

from sandboxes.models import Outcome, Sandbox, SandboxEvent, Snapshot, SnapshotStatus
from sandboxes.states import Status


class SandboxFilter(django_filters.FilterSet):
    status = django_filters.MultipleChoiceFilter(choices=Status.choices)
    provider = django_filters.CharFilter()
    preset = django_filters.CharFilter(field_name="preset_id")
    snapshot = django_filters.CharFilter(
        field_name="snapshot__snapshot_id", label="Snapshot version"
    )
    q = django_filters.CharFilter(method="search", label="Search name or id")

    class Meta:
        model = Sandbox
        fields = ["status", "provider", "preset", "snapshot"]

    def search(self, queryset, name, value):
        return queryset.filter(Q(name__icontains=value) | Q(pk__icontains=value))


class SnapshotFilter(django_filters.FilterSet):
    provider = django_filters.CharFilter()
    preset = django_filters.CharFilter(field_name="preset_id")
    status = django_filters.MultipleChoiceFilter(choices=SnapshotStatus.choices)

    class Meta:
        model = Snapshot
        fields = ["provider", "preset", "status"]


class EventFilter(django_filters.FilterSet):
    """The audit log: who, what, when, which sandbox."""

    actor = django_filters.CharFilter(field_name="actor_label", lookup_expr="icontains")
    action = django_filters.CharFilter()
    outcome = django_filters.ChoiceFilter(choices=Outcome.choices)
    sandbox = django_filters.CharFilter(field_name="sandbox_id")
    since = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = django_filters.IsoDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = SandboxEvent
        fields = ["actor", "action", "outcome", "sandbox", "since", "until"]
