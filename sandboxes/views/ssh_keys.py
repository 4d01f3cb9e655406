"""The user's SSH public keys for the gateway (docs/ssh.md): add, list, remove."""

from __future__ import annotations

from django.contrib import messages
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, render
from django.urls import reverse
from django.views.decorators.http import require_http_methods, require_POST

from sandboxes import selectors
from sandboxes.forms import SshKeyForm, add_service_error
from sandboxes.services import ssh as ssh_service
from sandboxes.services.errors import ServiceError
from sandboxes.views.common import actor, redirect_back, report, team_view


def _context(request: HttpRequest, **extra) -> dict:
    host, port = ssh_service.public_address()
    return {
        "keys": list(selectors.ssh_keys(user=request.user)),
        "form": SshKeyForm(),
        "gateway": ssh_service.command_for("<sandbox id>"),
        "gateway_host": host,
        "gateway_port": port,
        **extra,
    }


@require_http_methods(["GET", "POST"])
@team_view
def ssh_key_list(request: HttpRequest) -> HttpResponse:
    """GET lists the user's keys; POST adds one."""
    if request.method != "POST":
        return render(request, "ssh_keys/list.html", _context(request))
    form = SshKeyForm(request.POST)
    if form.is_valid():
        try:
            key = ssh_service.add_key(
                actor=actor(request),
                name=form.cleaned_data["name"],
                public_key=form.cleaned_data["public_key"],
            )
        except ServiceError as exc:
            add_service_error(form, exc)
        else:
            messages.success(request, f"Added SSH key {key.name} ({key.fingerprint}).")
            return redirect_back(request, reverse("ssh-key-list"))
    return render(request, "ssh_keys/list.html", _context(request, form=form), status=400)


@require_POST
@team_view
def ssh_key_delete(request: HttpRequest, key_id: int) -> HttpResponse:
    # Someone else's key is a 404, like every object of another team on these pages.
    get_object_or_404(selectors.ssh_keys(user=request.user), pk=key_id)
    try:
        ssh_service.delete_key(actor=actor(request), key_id=key_id)
        messages.success(request, "Removed the SSH key.")
    except ServiceError as exc:
        report(request, exc)
    return redirect_back(request, reverse("ssh-key-list"))
