"""`make run`: migrate, first-run set-up, then the web server, the django-q2 worker and the
SSH gateway (``manage.py ssh_gateway``, unless ``SANDBOX_SSH_GATEWAY`` is off).

The web server is uvicorn serving ``config.asgi`` (the production set-up, on one
process): under ASGI each request runs in a thread of its own, so a long exec or a
``?wait`` never holds a worker that another team's request needs (see
docs/architecture.md, "Serving").

manage.py marks this command's processes as the embedded setup (``SANDBOXES_EMBEDDED``):
without ``SECRET_KEY`` they share one generated into the data dir, and HTTPS-only settings
default off. DEBUG stays off unless set, so the static files are collected here for
WhiteNoise to serve, as in production.

On the first start with the local provider enabled, it queues a Debian image build for
it (``SANDBOX_DEFAULT_IMAGE``, when mmdebstrap is installed and Debian's mirror answers):
the worker builds it and makes it the active version of every local preset, while the
host-/usr version stays available (docs/images.md).

Ctrl-C (or SIGTERM) stops them all; if the web server or the worker exits, the others are
stopped too (the SSH gateway exiting, its port taken say, leaves the dashboard up). Each child runs
in its own process group, and what is left of a group after a 10 s grace is killed:
the worker's cluster is processes of its own, a long call may keep uvicorn past its
graceful shutdown, and a SIGTERM sent to this command alone (``kill``, a service manager)
must not leave one of them holding the port.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand, CommandError

from sandboxes.services import images
from sandboxes.services.errors import ServiceError


class Command(BaseCommand):
    help = "Run the dashboard (web server) and the background worker together."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="address:port to serve on")

    def handle(self, *args, addr, **options):
        call_command("migrate", interactive=False, verbosity=0)
        if not settings.DEBUG:  # with DEBUG, WhiteNoise serves them from the app dirs
            call_command("collectstatic", interactive=False, verbosity=0)
        call_command("ensure_admin")
        if "sync_schedules" in get_commands():
            call_command("sync_schedules")
        self._first_image()
        host, port = split_address(addr)
        module, _, name = settings.ASGI_APPLICATION.rpartition(".")
        web = [
            *(sys.executable, "-m", "uvicorn", f"{module}:{name}"),
            *("--app-dir", str(settings.BASE_DIR), "--host", host, "--port", str(port)),
            # The client's address is the peer's, as everywhere: a reverse proxy's header
            # counts only where CLIENT_IP_HEADER says so (uvicorn would otherwise believe
            # X-Forwarded-For from any local process, the login throttling's key).
            "--no-proxy-headers",
            # Requests still open this long after SIGTERM are cut off, inside serve's grace.
            *("--timeout-graceful-shutdown", "5"),
        ]
        children = [
            subprocess.Popen(web, process_group=0),
            subprocess.Popen([sys.executable, "manage.py", "worker"], process_group=0),
        ]
        if settings.SANDBOX_SSH_GATEWAY:
            # The SSH gateway (docs/ssh.md): a process of its own, as in production.
            children.append(
                subprocess.Popen([sys.executable, "manage.py", "ssh_gateway"], process_group=0)
            )
        self.stdout.write(f"Dashboard on http://{addr}/  (admin: http://{addr}/admin/)")

        def stop(*_):
            # SIGTERM, not SIGINT: a process started in the background by a shell ignores
            # SIGINT, and a child would then outlive this command. The web server's group
            # stops at once; the worker stops its own cluster.
            web, worker, *others = children
            for child in (web, *others):
                _signal_group(child, signal.SIGTERM)
            if worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + 10
            for child in children:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    child.wait(max(0.1, deadline - time.monotonic()))
                _signal_group(child, signal.SIGKILL)  # whatever of the group is left
            sys.exit(0)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        essential = children[:2]  # web and worker; the SSH gateway is not
        warned = False
        while all(child.poll() is None for child in essential):
            if not warned and any(child.poll() is not None for child in children[2:]):
                # Its port taken, say: the dashboard stays up, without SSH.
                self.stderr.write(
                    "The SSH gateway exited (see its message above); the dashboard runs on "
                    "without it (SANDBOX_SSH_PORT, or SANDBOX_SSH_GATEWAY=0)."
                )
                warned = True
            time.sleep(0.5)
        stop()

    def _first_image(self) -> None:
        """First start: queue a Debian image for `local` (the worker builds it and makes
        it active); until it is ready, sandboxes start from the host-/usr version."""
        try:
            build, why = images.queue_default_image(provider="local")
        except (ServiceError, ValueError) as exc:
            self.stderr.write(f"No default image: {exc}")
            return
        if build is not None:
            self.stdout.write(f"{why}; follow it on /snapshots/")


def split_address(addr: str) -> tuple[str, int]:
    """``127.0.0.1:8000`` -> ("127.0.0.1", 8000); ``[::1]:8000`` -> ("::1", 8000);
    ``8000`` -> ("127.0.0.1", 8000), as runserver took it."""
    host, _, port = addr.rpartition(":")
    try:
        number = int(port)
    except ValueError:
        raise CommandError(f"--addr {addr!r}: expected address:port") from None
    return host.strip("[]") or "127.0.0.1", number


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited
        os.killpg(child.pid, signum)
