"""The REST API for scripts (``/api/v1/``): DRF views over the selectors and services.

Modules by concern: ``auth`` (Bearer tokens and sessions -> a ``Principal``),
``permissions``, ``throttles`` (per team), ``errors`` (one error shape), ``serializers``,
``views`` and ``urls``; ``schema`` holds the OpenAPI extensions and hooks.
"""
