"""`manage.py ssh_gateway`: the SSH gateway (docs/ssh.md), its own process in production;
`make run` (``manage.py serve``) starts it beside the web server and the worker."""

import contextlib
from pathlib import Path

from django.core.management.base import BaseCommand

from sandboxes import ssh_gateway


class Command(BaseCommand):
    help = "Run the SSH gateway (ssh -p 2222 <sandbox id>@host)."

    def add_arguments(self, parser):
        host, port, key = ssh_gateway.default_address()
        parser.add_argument("--host", default=host, help=f"address to listen on ({host})")
        parser.add_argument("--port", type=int, default=port, help=f"port ({port})")
        parser.add_argument("--host-key", default=str(key), help="host key file (made if absent)")

    def handle(self, *args, host, port, host_key, **options):
        def ready() -> None:
            self.stdout.write(f"SSH gateway on {host}:{port}", ending="\n")
            self.stdout.flush()

        with contextlib.suppress(KeyboardInterrupt):
            ssh_gateway.serve_forever(host=host, port=port, key_path=Path(host_key), ready=ready)
