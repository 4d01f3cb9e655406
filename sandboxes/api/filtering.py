"""The shared FilterSets (``sandboxes/filters.py``) as a DRF filter backend."""

from __future__ import annotations

from django_filters.rest_framework import DjangoFilterBackend


class FilterBackend(DjangoFilterBackend):
    """django-filter's backend, skipped when the query names none of the filters.

    Building and validating a FilterSet's form costs about as much as the rest of a list
    request; most list calls filter nothing.
    """

    def filter_queryset(self, request, queryset, view):
        filterset_class = self.get_filterset_class(view, queryset)
        wanted = request.query_params
        if filterset_class is not None and not any(
            n in wanted for n in filterset_class.base_filters
        ):
            return queryset
        return super().filter_queryset(request, queryset, view)
