"""Strict request fields: a JSON value of the declared type or a 400, never a coercion.

DRF's own fields take ``5`` for a string and ``"5"`` for a number; an API that rejects
what it does not understand refuses both. Used by ``sandboxes/api/serializers.py``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime, tzinfo
from typing import Any

from drf_spectacular.utils import extend_schema_field
from rest_framework import serializers

from sandboxes.services.validation import (
    MAX_SECONDS,
    METADATA_MAX_KEY,
    METADATA_MAX_KEYS,
    METADATA_MAX_VALUE,
)


def iso_datetime(value: datetime | None, tz: tzinfo) -> str | None:
    """As DRF's DateTimeField writes it: ISO 8601 in the current time zone, UTC as Z."""
    if value is None:
        return None
    text = value.astimezone(tz).isoformat()
    return text[:-6] + "Z" if text.endswith("+00:00") else text


#: Fields whose value a row holds as the API writes it (DRF's to_representation would give
#: the same value back): copied as they are.
AS_STORED = (
    serializers.BooleanField,
    serializers.CharField,
    serializers.ChoiceField,
    serializers.DictField,
    serializers.IntegerField,
    serializers.ListField,
)

RowWriter = Callable[[Mapping[str, Any], tzinfo], Any]


def row_writer(serializer: serializers.Serializer) -> RowWriter:
    """Write a row (a mapping of column values) as ``serializer``'s declared fields say,
    without DRF's field-by-field machinery (a list page writes 50 rows on every call; it
    cost about 20 times as much). Each field's ``source`` is a key of the row, or ``*``
    for a nested serializer reading the row itself; nested serializers, lists of them and
    SerializerMethodFields (given the row) are written the same way. A field type with no
    rule here is refused when the writer is made, so a new field cannot be skipped."""
    steps = [
        (name, _field_writer(field))
        for name, field in serializer.fields.items()
        if not field.write_only
    ]

    def write(row: Mapping[str, Any], tz: tzinfo) -> dict[str, Any]:
        return {name: step(row, tz) for name, step in steps}

    return write


def _field_writer(field: serializers.Field) -> RowWriter:
    source = field.source
    if isinstance(field, serializers.SerializerMethodField):
        method = getattr(field.parent, field.method_name)
        return lambda row, tz: method(row)
    if isinstance(field, serializers.ListSerializer):
        item = row_writer(field.child)
        return lambda row, tz: [item(value, tz) for value in row[source]]
    if isinstance(field, serializers.Serializer):
        inner = row_writer(field)
        if source == "*":
            return inner
        return lambda row, tz: inner(row[source], tz)
    if isinstance(field, serializers.DateTimeField):
        return lambda row, tz: iso_datetime(row[source], tz)
    if isinstance(field, AS_STORED) and "." not in source and source != "*":
        if field.default is not serializers.empty:  # as DRF: the default when it is missing
            default = field.default
            return lambda row, tz: row.get(source, default)
        return lambda row, tz: row[source]
    raise TypeError(f"row_writer: no rule for {field.field_name} ({type(field).__name__})")


class StrictSerializer(serializers.Serializer):
    """A request body: a JSON object with only the fields declared here."""

    def to_internal_value(self, data: Any) -> Any:
        if isinstance(data, Mapping):
            known = {name for name, field in self.fields.items() if not field.read_only}
            unknown = sorted(str(key) for key in data if key not in known)
            if unknown:
                raise serializers.ValidationError({key: ["unknown field"] for key in unknown})
        return super().to_internal_value(data)


class StrictCharField(serializers.CharField):
    """Only a JSON string (DRF's CharField would also take 5 and turn it into "5")."""

    default_error_messages = {"not_a_string": "must be a string"}

    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            self.fail("not_a_string")
        return super().to_internal_value(data)


class StrictIntegerField(serializers.IntegerField):
    """Only a JSON integer (not "5", 5.0 or true)."""

    def to_internal_value(self, data: Any) -> int:
        if not isinstance(data, int) or isinstance(data, bool):
            self.fail("invalid")
        return super().to_internal_value(data)


class StrictBooleanField(serializers.BooleanField):
    """Only true or false (not "yes", 1 or "on")."""

    def to_internal_value(self, data: Any) -> bool:
        if not isinstance(data, bool):
            self.fail("invalid", input=data)
        return data


class StrictRegexField(serializers.RegexField):
    def to_internal_value(self, data: Any) -> str:
        if not isinstance(data, str):
            raise serializers.ValidationError("must be a string")
        return super().to_internal_value(data)


@extend_schema_field(
    {
        "type": "object",
        "additionalProperties": {"type": "string", "maxLength": METADATA_MAX_VALUE},
        "maxProperties": METADATA_MAX_KEYS,
        "propertyNames": {
            "pattern": r"^[A-Za-z0-9_.:/-]+$",
            "minLength": 1,
            "maxLength": METADATA_MAX_KEY,
        },
        "description": (
            f"String to string; at most {METADATA_MAX_KEYS} keys of 1-{METADATA_MAX_KEY} "
            f"characters A-Z a-z 0-9 _ . : / - and values of at most {METADATA_MAX_VALUE}."
        ),
    }
)
class MetadataField(serializers.DictField):
    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault(
            "child",
            StrictCharField(allow_blank=True, trim_whitespace=False, max_length=METADATA_MAX_VALUE),
        )
        super().__init__(**kwargs)


def seconds_field(**kwargs: Any) -> serializers.IntegerField:
    return StrictIntegerField(min_value=1, max_value=MAX_SECONDS, **kwargs)


def name_field() -> serializers.RegexField:
    return StrictRegexField(
        r"^[^\x00-\x1f]*$",
        required=False,
        allow_blank=True,
        max_length=100,
        help_text="At most 100 characters, no control characters.",
    )


def _encodable(text: str) -> bool:
    """No NUL (no process takes it) and valid UTF-8 (no back end can be sent anything else)."""
    if "\x00" in text:
        return False
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


NO_NUL = r"^[^\x00]*$"


@extend_schema_field(
    {
        "oneOf": [
            {
                "type": "string",
                "minLength": 1,
                "pattern": NO_NUL,
                "description": "Run by /bin/sh -c.",
            },
            {
                "type": "array",
                "prefixItems": [{"type": "string", "minLength": 1, "pattern": NO_NUL}],
                "items": {"type": "string", "pattern": NO_NUL},
                "minItems": 1,
                "maxItems": 1000,
                "description": "An argv list, run as it is.",
            },
        ]
    }
)
class CommandField(serializers.Field):
    default_error_messages = {
        "invalid": "a non-empty string or a list of strings whose first item is not empty",
        "characters": "must not contain NUL or unpaired surrogate characters",
    }

    def to_internal_value(self, data: Any) -> str | list[str]:
        if isinstance(data, str) and data:
            parts = [data]
        elif isinstance(data, list) and data and all(isinstance(p, str) for p in data):
            parts = data
            if not data[0]:
                self.fail("invalid")
        else:
            self.fail("invalid")
        if not all(_encodable(part) for part in parts):
            self.fail("characters")
        return data

    def to_representation(self, value: Any) -> Any:
        return value
