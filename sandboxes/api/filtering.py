"""The shared FilterSets (``sandboxes/filters.py``) as a DRF filter backend, held to the
schema: what the OpenAPI schema calls invalid is refused (400), not quietly ignored."""

from __future__ import annotations

import re

import django_filters
from django_filters.rest_framework import DjangoFilterBackend
from rest_framework.exceptions import ValidationError

#: RFC 3339 date-time, what the schema's ``format: date-time`` means: with a time and an
#: offset. (The dashboard's forms send looser values; the shared FilterSets accept those.)
RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(?:\.\d+)?(?:[Zz]|[+-]\d{2}:\d{2})", re.ASCII
)
CHOICES = (django_filters.ChoiceFilter, django_filters.MultipleChoiceFilter)


def problems(filter_, values: list[str]) -> list[str]:
    """Why the API refuses these values of one filter (empty: it does not)."""
    if isinstance(filter_, CHOICES) and "" in values:
        return ["must be one of the listed values, not empty"]
    if isinstance(filter_, django_filters.IsoDateTimeFilter) and not all(
        RFC3339.fullmatch(value) for value in values
    ):
        return ["an RFC 3339 date-time, e.g. 2026-01-31T12:00:00Z"]
    return []


class FilterBackend(DjangoFilterBackend):
    """django-filter's backend, stricter about empty and loose values, and skipped when
    the query names none of the filters (building and validating a FilterSet's form costs
    about as much as the rest of a list request; most list calls filter nothing)."""

    def filter_queryset(self, request, queryset, view):
        filterset_class = self.get_filterset_class(view, queryset)
        if filterset_class is None:
            return queryset
        query = request.query_params
        given = [name for name in filterset_class.base_filters if name in query]
        if not given:
            return queryset
        errors = {
            name: found
            for name in given
            if (found := problems(filterset_class.base_filters[name], query.getlist(name)))
        }
        if errors:
            raise ValidationError(errors)
        return super().filter_queryset(request, queryset, view)
