"""A git HTTP server and a Python package index for tests, on a socket the test chooses
(loopback, or a test host inside a network namespace the test made: tests/netns_world.py).

Repositories are served by git's own ``git http-backend`` (the smart HTTP protocol, as a
forge serves them): ``/public/NAME.git`` to anyone, ``/private/NAME.git`` only with HTTP
basic authentication as ``USER`` and the password the server was given. ``/simple/`` is a
PEP 503 index of the wheels made by ``add_wheel``; ``/files/`` serves them.

Every request is recorded (path, whether it was authorised), never its credentials.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import html
import os
import shutil
import socket
import subprocess
import threading
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

USER = "robot"


def git(*args: str, cwd: Path | None = None) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "t",
        "GIT_AUTHOR_EMAIL": "t@example.invalid",
        "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@example.invalid",
        "GIT_CONFIG_NOSYSTEM": "1",
        "HOME": str(cwd or "/nonexistent"),
    }
    done = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return done.stdout


class GitServer:
    def __init__(self, root: Path, *, password: str) -> None:
        self.root = root
        self.password = password
        self.repos = root / "repos"
        self.files = root / "files"
        self.repos.mkdir(parents=True)
        self.files.mkdir()
        self.requests: list[tuple[str, bool]] = []
        self._server: ThreadingHTTPServer | None = None

    # --- content -----------------------------------------------------------------------

    def add_repo(
        self, name: str, files: dict[str, str], *, private: bool = False, branches=None
    ) -> str:
        """A bare repository with one commit of ``files`` on main, and on each branch of
        ``branches`` ({branch: files}) one more commit; returns its path on the server."""
        where = "private" if private else "public"
        work = self.root / "work" / where / name
        work.mkdir(parents=True)
        git("init", "-q", "-b", "main", cwd=work)
        for path, text in files.items():
            (work / path).parent.mkdir(parents=True, exist_ok=True)
            (work / path).write_text(text)
        git("add", "-A", cwd=work)
        git("commit", "-q", "-m", "first", cwd=work)
        for branch, changes in (branches or {}).items():
            git("checkout", "-q", "-b", branch, "main", cwd=work)
            for path, text in changes.items():
                (work / path).write_text(text)
            git("add", "-A", cwd=work)
            git("commit", "-q", "-m", branch, cwd=work)
        git("checkout", "-q", "main", cwd=work)
        bare = self.repos / where / f"{name}.git"
        bare.parent.mkdir(parents=True, exist_ok=True)
        git("clone", "-q", "--bare", str(work), str(bare), cwd=self.root)
        git("config", "http.receivepack", "false", cwd=bare)
        return f"/{where}/{name}.git"

    def add_wheel(self, name: str, version: str, module: str) -> None:
        """A pure-Python wheel of ``name`` holding ``{name}.py`` = ``module``."""
        dist = f"{name}-{version}"
        wheel = self.files / f"{dist}-py3-none-any.whl"
        entries = {
            f"{name}.py": module,
            f"{dist}.dist-info/METADATA": (
                f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            ),
            f"{dist}.dist-info/WHEEL": (
                "Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
            ),
        }
        record = []
        for path, text in entries.items():
            digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=")
            record.append(f"{path},sha256={digest.decode()},{len(text.encode())}")
        record.append(f"{dist}.dist-info/RECORD,,")
        entries[f"{dist}.dist-info/RECORD"] = "\n".join(record) + "\n"
        with zipfile.ZipFile(wheel, "w") as archive:
            for path, text in entries.items():
                archive.writestr(path, text)

    # --- serving -----------------------------------------------------------------------

    def serve(self, sock: socket.socket) -> None:
        """Serve on ``sock`` (bound and listening) in a thread until ``close``."""
        server = ThreadingHTTPServer(
            sock.getsockname()[:2], _handler(self), bind_and_activate=False
        )
        server.socket.close()
        server.socket = sock
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()

    def authorised(self, header: str | None) -> bool:
        expected = base64.b64encode(f"{USER}:{self.password}".encode()).decode()
        return header == f"Basic {expected}"


def listening(host: str = "127.0.0.1", port: int = 0) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(64)
    return sock


def _handler(server: GitServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self._route()

        def do_POST(self) -> None:
            self._route()

        def _route(self) -> None:
            path, _, query = self.path.partition("?")
            ok = server.authorised(self.headers.get("Authorization"))
            server.requests.append((path, ok))
            if path.startswith("/simple/"):
                return self._index(path)
            if path.startswith("/files/"):
                return self._file(path)
            if path.startswith("/private/") and not ok:
                self.send_response(401)
                self.send_header("WWW-Authenticate", 'Basic realm="git"')
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if path.startswith(("/public/", "/private/")):
                return self._git(path, query)
            self.send_error(404)
            return None

        def _index(self, path: str) -> None:
            project = path.removeprefix("/simple/").strip("/")
            links = [
                f'<a href="/files/{html.escape(f.name)}">{html.escape(f.name)}</a>'
                for f in sorted(server.files.iterdir())
                if project and f.name.split("-")[0].replace("_", "-") == project
            ]
            if project and not links:
                self.send_error(404)
                return
            self._send(
                200, "text/html", ("<html><body>" + "".join(links) + "</body></html>").encode()
            )

        def _file(self, path: str) -> None:
            name = path.removeprefix("/files/")
            target = server.files / name
            if "/" in name or not target.is_file():
                self.send_error(404)
                return
            self._send(200, "application/octet-stream", target.read_bytes())

        def _send(self, code: int, kind: str, body: bytes) -> None:
            self.send_response(code)
            self.send_header("Content-Type", kind)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _git(self, path: str, query: str) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            env = {
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "GIT_PROJECT_ROOT": str(server.repos),
                "GIT_HTTP_EXPORT_ALL": "1",
                "PATH_INFO": path,
                "QUERY_STRING": query,
                "REQUEST_METHOD": self.command,
                "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                "CONTENT_LENGTH": str(len(body)),
                "REMOTE_ADDR": self.client_address[0],
                "GIT_CONFIG_NOSYSTEM": "1",
                "HOME": str(server.root),
            }
            if self.headers.get("Content-Encoding"):
                env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
            if self.headers.get("Git-Protocol"):
                env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
            # Streamed as git writes it (HTTP/1.0: the body ends when the connection does).
            with subprocess.Popen(
                [shutil.which("git") or "git", "http-backend"],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                env=env,
            ) as backend:
                assert backend.stdin is not None
                assert backend.stdout is not None
                backend.stdin.write(body)
                backend.stdin.close()
                head = b""
                while b"\r\n\r\n" not in head:
                    data = backend.stdout.read1(65536)
                    if not data:
                        break
                    head += data
                head, _, first = head.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode(errors="replace").split("\r\n"):
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                with contextlib.suppress(OSError):
                    self.wfile.write(first)
                    while data := backend.stdout.read1(1 << 20):
                        self.wfile.write(data)

    return Handler
