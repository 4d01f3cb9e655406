"""The service proxy's URLs (``sandboxes/proxy.py``), kept apart from the dashboard's pages:
``/s/<sandbox id>/<service>/<path>`` forwards to a sandbox's exposed service."""

from django.urls import path

from sandboxes import proxy

urlpatterns = [
    path("<str:sandbox_id>/<str:service>/", proxy.service_proxy, name="service-proxy"),
    path(
        "<str:sandbox_id>/<str:service>/<path:path>",
        proxy.service_proxy,
        name="service-proxy-path",
    ),
]
