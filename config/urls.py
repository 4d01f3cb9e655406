from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("sandboxes.api.urls")),
    path("login/", auth_views.LoginView.as_view(redirect_authenticated_user=True), name="login"),
    path("logout/", auth_views.LogoutView.as_view(), name="logout"),
    # Exposed services through the control plane (counts as activity, wakes paused ones).
    path("s/", include("sandboxes.proxy_urls")),
    path("", include("sandboxes.urls")),
]

# JSON errors under /api/, the site's pages elsewhere.
handler404 = "sandboxes.api.errors.not_found"
handler500 = "sandboxes.api.errors.server_error"
