"""FilterSets shared by the dashboard and the API: one definition of every list filter."""

from __future__ import annotations

from datetime import UTC

import django_filters
from django import forms
from django.db.models import Q
from django_filters.fields import IsoDateTimeField

from sandboxes.models import Outcome, Sandbox, SandboxEvent, Snapshot, SnapshotStatus
from sandboxes.states import Status


class UtcIsoDateTimeField(IsoDateTimeField):
    """An ISO 8601 time, turned into UTC: any offset Python accepts (up to 24 h) reaches
    the database as UTC (PostgreSQL refuses offsets beyond 15:59), and a time that cannot
    be expressed in UTC (year 1 minus a day) is a form error, not a crash."""

    def to_python(self, value):
        parsed = super().to_python(value)
        if parsed is None:
            return None
        try:
            return parsed.astimezone(UTC)
        except OverflowError:
            raise forms.ValidationError("out of range", code="invalid") from None


class UtcDateTimeFilter(django_filters.IsoDateTimeFilter):
    field_class = UtcIsoDateTimeField


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
    since = UtcDateTimeFilter(field_name="created_at", lookup_expr="gte")
    until = UtcDateTimeFilter(field_name="created_at", lookup_expr="lt")

    class Meta:
        model = SandboxEvent
        fields = ["actor", "action", "outcome", "sandbox", "since", "until"]
