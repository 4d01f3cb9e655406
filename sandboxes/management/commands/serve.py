"""`make run`: migrate, first-run set-up, then the web server and the django-q2 worker.

Ctrl-C (or SIGTERM) stops both; if either exits, the other is stopped too.
"""

import signal
import subprocess
import sys
import time

from django.core.management import call_command, get_commands
from django.core.management.base import BaseCommand


class Command(BaseCommand):
    help = "Run the dashboard (web server) and the background worker together."

    def add_arguments(self, parser):
        parser.add_argument("--addr", default="127.0.0.1:8000", help="address:port to serve on")

    def handle(self, *args, addr, **options):
        call_command("migrate", interactive=False, verbosity=0)
        call_command("ensure_admin")
        if "sync_schedules" in get_commands():
            call_command("sync_schedules")
        manage = [sys.executable, "manage.py"]
        children = [
            subprocess.Popen([*manage, "runserver", addr]),
            subprocess.Popen([*manage, "qcluster"]),
        ]
        self.stdout.write(f"Dashboard on http://{addr}/  (admin: http://{addr}/admin/)")

        def stop(*_):
            for child in children:
                if child.poll() is None:
                    child.send_signal(signal.SIGINT)
            deadline = time.monotonic() + 10
            for child in children:
                try:
                    child.wait(max(0.1, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    child.kill()
            sys.exit(0)

        signal.signal(signal.SIGINT, stop)
        signal.signal(signal.SIGTERM, stop)
        while all(child.poll() is None for child in children):
            time.sleep(0.5)
        stop()
