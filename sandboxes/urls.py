from django.urls import path

from sandboxes import proxy, views

urlpatterns = [
    path("", views.home, name="home"),
    # Exposed services through the control plane (touches activity; wakes paused sandboxes).
    path("s/<str:sandbox_id>/<str:service>/", proxy.service_proxy, name="service-proxy"),
    path("s/<str:sandbox_id>/<str:service>/<path:path>", proxy.service_proxy),
]
