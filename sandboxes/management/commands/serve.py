"""`make run`: migrate, first-run set-up, then the web server and the django-q2 worker.

manage.py marks this command's processes as the embedded setup (``SANDBOXES_EMBEDDED``):
without ``SECRET_KEY`` they share one generated into the data dir, and HTTPS-only settings
default off. DEBUG stays off unless set, so the static files are collected here for
WhiteNoise to serve, as in production.

Ctrl-C (or SIGTERM) stops both; if either exits, the other is stopped too. Each child runs
in its own process group, and what is left of a group after a 10 s grace is killed:
runserver's autoreloader and the worker's cluster are processes of their own, and a SIGTERM
sent to this command alone (``kill``, a service manager) must not leave one of them
holding the port.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

from django.conf import settings
from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand


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
        manage = [sys.executable, "manage.py"]
        children = [
            subprocess.Popen([*manage, "runserver", addr], process_group=0),
            subprocess.Popen([*manage, "worker"], process_group=0),
        ]
        self.stdout.write(f"Dashboard on http://{addr}/  (admin: http://{addr}/admin/)")

        def stop(*_):
            # SIGTERM, not SIGINT: a process started in the background by a shell ignores
            # SIGINT, and runserver's autoreloader would then outlive this command. The
            # web server's group stops at once; the worker stops its own cluster.
            web, worker = children
            _signal_group(web, signal.SIGTERM)
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
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        stop()


def _signal_group(child: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError):  # the whole group has exited
        os.killpg(child.pid, signum)
