"""The docs match the code: the README and docs/configuration.md name every environment
variable the code reads, and every management command they show exists and takes the
arguments shown."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

from django.core.management import CommandError

ROOT = Path(__file__).resolve().parent.parent
#: A call that reads a setting from the environment (or a provider's config mapping).
ENV_READ = re.compile(
    r'(?:env_\w+|env\.get|environ\.get|config\.get|_setting)\(\s*(?:config,\s*)?"([A-Z][A-Z0-9_]+)"'
)
#: Read for what they always mean, not as our settings; or set by the code itself for a
#: child process (the PVE sandbox agent's secret, passed into the guest).
NOT_SETTINGS = {"PATH", "HOME", "XDG_DATA_HOME", "SANDBOX_AGENT_SECRET"}


def variables_read() -> set[str]:
    names: set[str] = set()
    for folder in ("config", "providers", "sandboxes"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(ENV_READ.findall(path.read_text()))
    return names - NOT_SETTINGS


def test_the_scan_finds_the_settings_it_should():
    found = variables_read()
    assert {"DATABASE_URL", "PVE_API_TOKEN", "LOCAL_SANDBOX_ROOT", "SNAPSHOT_RETENTION"} <= found


def test_every_environment_variable_is_documented():
    readme = (ROOT / "README.md").read_text()
    configuration = "\n".join(
        p.read_text()
        for p in [ROOT / "docs" / "configuration.md", *(ROOT / "docs" / "providers").glob("*.md")]
    )
    missing_in_readme = sorted(n for n in variables_read() if f"`{n}`" not in readme)
    missing_in_docs = sorted(n for n in variables_read() if f"`{n}`" not in configuration)
    assert not missing_in_readme, f"add to README.md: {missing_in_readme}"
    assert not missing_in_docs, f"add to docs/configuration.md: {missing_in_docs}"


#: ``manage.py <command> [args]`` in a code block or a code span, up to a shell separator
#: or a comment; a block's ``\`` continuations are joined first.
MANAGE = re.compile(r"manage\.py\s+([a-z_]+)([^`\n#;|&]*)")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """(where, command, arguments) for every management command shown in the docs."""
    shown = []
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        lines = doc.read_text().splitlines()
        for number, line in enumerate(lines, 1):
            if number > 1 and lines[number - 2].endswith("\\"):
                continue  # joined to the line it continues
            follow = number
            while line.endswith("\\") and follow < len(lines):
                line, follow = line[:-1] + lines[follow], follow + 1
            for name, rest in MANAGE.findall(line):
                args = shlex.split(rest.strip())
                if "..." in args:  # "manage.py ..." in prose: any command
                    continue
                shown.append((f"{doc.relative_to(ROOT)}:{number}", name, args))
    return shown


def test_the_command_scan_finds_the_commands_it_should():
    shown = {(name, tuple(args)) for _, name, args in documented_commands()}
    assert ("worker", ()) in shown
    assert ("create_api_token", ("admin", "--team", "platform")) in shown
    assert any(name == "import_snapshot" and "--ref" in args for name, args in shown)


def test_every_documented_command_exists_and_takes_the_arguments_shown():
    """Each shown command is parsed by its own argument parser, so a wrong shape (a
    positional where the command takes ``--provider``, a removed option) fails here."""
    from django.core.management import get_commands, load_command_class

    commands = get_commands()
    wrong = []
    for where, name, args in documented_commands():
        if name not in commands:
            wrong.append(f"{where}: no command {name}")
            continue
        command = load_command_class(commands[name], name)
        parser = command.create_parser("manage.py", name)
        try:
            parser.parse_args(args)
        except SystemExit as exc:  # --help prints and exits 0
            if exc.code != 0:
                wrong.append(f"{where}: manage.py {name} {' '.join(args)}: exit {exc.code}")
        except CommandError as exc:
            wrong.append(f"{where}: manage.py {name} {' '.join(args)}: {exc}")
    assert not wrong, "\n".join(wrong)


def test_every_documented_command_runs_with_help():
    names = sorted({name for _, name, _ in documented_commands()})
    for name in names:
        result = subprocess.run(
            [sys.executable, "manage.py", name, "--help"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "config.settings_test"},
        )
        assert result.returncode == 0, f"manage.py {name} --help: {result.stderr[-2000:]}"
        assert "usage: manage.py" in result.stdout


#: ``make <target>`` in a code span, or starting a line of a code block (after variables).
MAKE = re.compile(r"`(?:[A-Z_]+=\S+ )*make ([a-z][a-z-]*)|^\s+(?:[A-Z_]+=\S+ )*make ([a-z][a-z-]*)")


def test_every_documented_make_target_exists():
    targets = set(re.findall(r"^([a-z][a-z-]*):", (ROOT / "Makefile").read_text(), re.M))
    shown = set()
    for doc in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for line in doc.read_text().splitlines():
            for span, block in MAKE.findall(line):
                shown.add((doc.relative_to(ROOT), span or block))
    assert {"run", "test", "bench"} <= {target for _, target in shown}
    missing = sorted(f"{doc}: make {target}" for doc, target in shown if target not in targets)
    assert not missing, f"no such Makefile target: {missing}"
