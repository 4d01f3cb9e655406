#!/usr/bin/env python3
"""Django's command-line utility for the Sandboxes control plane."""

import os
import sys


def main() -> None:
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    if sys.argv[1:2] == ["serve"]:
        # `make run`: the single-machine setup, for serve and the processes it starts
        # (config/settings.py: a persisted SECRET_KEY, plain HTTP on 127.0.0.1).
        os.environ.setdefault("SANDBOXES_EMBEDDED", "1")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)


if __name__ == "__main__":
    main()
