"""Every list answers ``{"count", "next", "previous", "results"}``, 50 per page by default."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any

from django.core.paginator import Page
from django.core.paginator import Paginator as DjangoPaginator
from rest_framework.exceptions import ValidationError
from rest_framework.pagination import PageNumberPagination
from rest_framework.request import Request


def _positive(request: Request, name: str, *, maximum: int | None = None) -> int | None:
    """The query parameter as a whole number from 1 (to ``maximum``); 400 otherwise."""
    raw = request.query_params.get(name)
    if raw is None:
        return None
    if not raw.isascii() or not raw.isdigit() or int(raw) < 1:
        raise ValidationError({name: ["a whole number from 1"]})
    if maximum is not None and int(raw) > maximum:
        raise ValidationError({name: [f"at most {maximum}"]})
    return int(raw)


class RowPaginator(DjangoPaginator):
    """Counts the model queryset it is given and turns only the page's slice into rows.

    Counting the plain, filtered queryset (not the page's ``values()`` query with its
    columns and subquery) keeps the count cheap to build as well as to run.
    """

    def __init__(self, object_list, per_page, *, rows: Callable, **kwargs) -> None:
        super().__init__(object_list, per_page, **kwargs)
        self.rows = rows

    def page(self, number) -> Page:
        page = super().page(number)
        page.object_list = self.rows(page.object_list)  # still a lazy slice: one query
        return page


class Pagination(PageNumberPagination):
    """DRF's page numbers, but a malformed ``page`` or ``page_size`` is refused (400)
    instead of silently replaced; a page past the end is still 404."""

    page_size = 50
    page_size_query_param = "page_size"
    max_page_size = 200
    last_page_strings = ()

    def get_page_size(self, request: Request) -> int:
        return _positive(request, self.page_size_query_param, maximum=self.max_page_size) or (
            self.page_size
        )

    def paginate_queryset(self, queryset, request: Request, view=None):
        _positive(request, self.page_query_param)
        rows = getattr(view, "page_rows", None)  # a view that lists rows, not objects
        self.django_paginator_class = partial(RowPaginator, rows=rows) if rows else DjangoPaginator
        return super().paginate_queryset(queryset, request, view)

    def get_schema_operation_parameters(self, view) -> list[dict[str, Any]]:
        parameters = super().get_schema_operation_parameters(view)
        for parameter in parameters:
            parameter["schema"]["minimum"] = 1
            if parameter["name"] == self.page_size_query_param:
                parameter["schema"]["maximum"] = self.max_page_size
                parameter["description"] = (
                    f"Results per page: 1 to {self.max_page_size}, 50 by default."
                )
        return parameters
