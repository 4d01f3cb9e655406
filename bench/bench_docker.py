"""Docker provider: create+start to first exec, exec, pause/unpause, stop/start, snapshot.

Uses the daemon at ``DOCKER_HOST`` when set; otherwise starts a private dockerd the way
the tests do (root and Debian's docker.io needed). No targets: the issue sets none; the
numbers are for comparison with the other providers.
"""

from __future__ import annotations

import itertools
import os

from bench import Result, median_result, timed
from providers.base import InstanceSpec
from providers.docker_provider import DockerProvider

ROUNDS = 10
_ids = itertools.count(1)


def _spec() -> InstanceSpec:
    return InstanceSpec(f"sbx-bench{next(_ids):05d}", "1vcpu_512mb_4gb", 1, 512, 4)


def run() -> list[Result]:
    host = os.environ.get("DOCKER_HOST", "")
    private = None
    if not host:
        from tests import docker_daemon

        private = docker_daemon._start()
        host = private.host
    provider = DockerProvider(host)
    made = []
    try:
        base = provider.ensure_base_image()

        def start_to_first_exec() -> None:
            spec = _spec()
            instance = provider.create(spec, base, {"sandbox_id": spec.sandbox_id})
            made.append(instance)
            instance.start()
            instance.exec("true", timeout=30)

        results = [
            median_result(
                "create + start + first exec",
                timed(start_to_first_exec, repeat=ROUNDS),
                at_most=None,
            )
        ]
        instance = made[0]
        results.append(
            median_result(
                "exec `true`", timed(lambda: instance.exec("true"), repeat=30), at_most=None
            )
        )

        def pause_resume() -> None:
            instance.pause()
            instance.resume()

        results.append(
            median_result("pause + resume", timed(pause_resume, repeat=ROUNDS), at_most=None)
        )

        def stop_start() -> None:
            instance.stop()
            instance.start()

        results.append(
            median_result("stop + start", timed(stop_start, repeat=ROUNDS), at_most=None)
        )
        snapshots: list[str] = []
        results.append(
            median_result(
                "snapshot (docker commit)",
                timed(lambda: snapshots.append(instance.snapshot().ref), repeat=5, warmup=0),
                at_most=None,
            )
        )
        for instance in made:
            instance.delete()
        made.clear()
        for ref in snapshots:
            provider.delete_snapshot(ref)
        return results
    finally:
        for instance in made:
            instance.delete()
        if private is not None:
            private.stop()
