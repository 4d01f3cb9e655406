"""The inside of a simulated VM: its QEMU guest agent (stdlib only, run inside bubblewrap).

The simulator starts one bubblewrap per running VM (its own PID namespace, the VM's disk
at the guest's working directory, a private ``/tmp`` and ``/run``) with this program in
it; it plays qemu-guest-agent, taking requests on a unix socket the simulator binds in:
``exec`` (start a command, answer its pid, then its exit and output) and ``file-write``.
Everything a VM runs (exec'd commands, the sandbox agent the provider starts through the
guest agent, its terminals) therefore shares one process namespace and file system, as
in a real VM, and dies with it when the VM stops.

Run: ``python3 vm_guest.py <socket path>``; one JSON line per request and per answer.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import threading


def _serve(conn: socket.socket) -> None:
    with conn, conn.makefile("rwb") as stream:
        try:
            request = json.loads(stream.readline())
            if request["op"] == "file-write":
                path = request["file"]
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
                with os.fdopen(fd, "wb") as out:
                    out.write(base64.b64decode(request["content"]))
                _answer(stream, {"ok": True})
                return
            proc = subprocess.Popen(
                [str(part) for part in request["argv"]],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                cwd="/",
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            _answer(stream, {"error": f"{type(exc).__name__}: {exc}"})
            return
        _answer(stream, {"pid": proc.pid})
        out, err = proc.communicate()
        _answer(
            stream,
            {
                "code": proc.returncode,
                "out": base64.b64encode(out).decode(),
                "err": base64.b64encode(err).decode(),
            },
        )


def _answer(stream, payload: dict) -> None:
    stream.write(json.dumps(payload).encode() + b"\n")
    stream.flush()


def main() -> None:
    path = sys.argv[1]
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path + ".new")
    listener.listen(64)
    os.rename(path + ".new", path)  # the simulator waits for this name
    while True:
        conn, _ = listener.accept()
        threading.Thread(target=_serve, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    main()
