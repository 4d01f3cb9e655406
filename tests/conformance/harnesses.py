"""Providers the conformance suite runs against, one entry per provider.

A harness is a context manager factory: given pytest's ``tmp_path_factory`` it sets up the
back end (or its faithful simulator), yields a ``ProviderUnderTest`` and tears everything
down afterwards. When a system component it needs is missing, it calls
``tests.system.require(...)``, which skips with a one-line reason (a failure under CI).

Adding a provider to the suite = one function here and one entry in ``HARNESSES``.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import pytest

from providers.base import InstanceSpec, Provider
from providers.registry import register_provider
from tests import filestore_provider, memory_provider

_ids = itertools.count(1)


@dataclass
class ProviderUnderTest:
    provider: Provider
    #: A ready snapshot version to create instances from.
    snapshot_ref: str
    #: vcpus, memory_mb and disk_gb small enough for the back end.
    size: tuple[int, int, int] = (1, 512, 4)
    #: A well-formed reference to a snapshot that does not exist.
    missing_snapshot_ref: str = "no-such-snapshot"
    #: Every instance the test made, deleted at teardown even if the test failed.
    made: list = field(default_factory=list)
    #: The settings (environment variables) from which another process builds the same
    #: provider, sharing its instances; None when the back end lives in this process only.
    #: The background tests start real django-q2 workers with them.
    config: dict[str, str] | None = None
    #: Why commands do not really run on this back end ('' when they do): a simulator
    #: that answers exec requests without executing them (moto's SSM). Tests that need a
    #: command's effect skip with this reason instead of passing on a fake answer.
    no_exec: str = ""

    def needs_exec(self) -> None:
        """Skip the calling test when commands do not really run here."""
        if self.no_exec:
            pytest.skip(self.no_exec)

    def spec(self, **overrides) -> InstanceSpec:
        vcpus, memory_mb, disk_gb = self.size
        values = {
            "sandbox_id": f"sbx-conf{next(_ids):06d}",
            "preset_id": "1vcpu_512mb_4gb",
            "vcpus": vcpus,
            "memory_mb": memory_mb,
            "disk_gb": disk_gb,
        }
        values.update(overrides)
        return InstanceSpec(**values)

    def metadata(self, spec: InstanceSpec) -> dict[str, str]:
        return {
            "sandbox_id": spec.sandbox_id,
            "team": "conformance",
            "preset": spec.preset_id,
            "snapshot_id": "conformance",
        }

    def create(self, spec: InstanceSpec | None = None, snapshot_ref: str | None = None):
        spec = spec or self.spec()
        instance = self.provider.create(
            spec, snapshot_ref or self.snapshot_ref, self.metadata(spec)
        )
        self.made.append(instance)
        return instance

    def running(self, **overrides):
        instance = self.create(self.spec(**overrides))
        instance.start()
        return self.provider.get(instance.id)


Harness = Callable[[pytest.TempPathFactory], contextlib.AbstractContextManager[ProviderUnderTest]]


@contextlib.contextmanager
def memory_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderUnderTest]:
    register_provider(memory_provider.NAME, lambda: memory_provider.MemoryProvider)
    memory_provider.reset()
    yield ProviderUnderTest(provider=memory_provider.MemoryProvider(), snapshot_ref="base")


@contextlib.contextmanager
def filestore_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderUnderTest]:
    register_provider(filestore_provider.NAME, lambda: filestore_provider.FileStoreProvider)
    root = tmp_path_factory.mktemp("filestore")
    provider = filestore_provider.FileStoreProvider.from_config(
        {filestore_provider.ROOT_KEY: str(root)}
    )
    yield ProviderUnderTest(
        provider=provider,
        snapshot_ref=filestore_provider.BASE_SNAPSHOT,
        config={"SANDBOX_PROVIDERS": "filestore", filestore_provider.ROOT_KEY: str(root)},
    )


@contextlib.contextmanager
def morph_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderUnderTest]:
    from providers.morph import MorphProvider
    from tests.morph_fake import FakeMorph

    fake = FakeMorph("morph-conformance-key").start()
    try:
        provider = MorphProvider(
            fake.api_key,
            fake.base_url,
            poll_interval=0.01,
            ssh_hostname=fake.ssh.hostname,
            ssh_port=fake.ssh.port,
        )
        yield ProviderUnderTest(
            provider=provider,
            snapshot_ref=fake.state.BASE_SNAPSHOT,
            missing_snapshot_ref="snapshot_missing",
        )
    finally:
        fake.stop()


@contextlib.contextmanager
def docker_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderUnderTest]:
    from tests.docker_daemon import docker_provider_under_test

    with docker_provider_under_test() as (provider, base_ref):
        yield ProviderUnderTest(
            provider=provider,
            snapshot_ref=base_ref,
            size=(1, 256, 1),
            missing_snapshot_ref="sandboxes-missing:none",
        )


def _pve_harness(kind: str) -> Harness:
    @contextlib.contextmanager
    def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderUnderTest]:
        from tests.pve_sim.harness import simulated, template_for

        root = tmp_path_factory.mktemp(kind)
        with simulated(kind, root) as (sim, provider):
            yield ProviderUnderTest(
                provider=provider,
                snapshot_ref=template_for(kind),
                missing_snapshot_ref="8999",
                config={**sim.config(), "SANDBOX_PROVIDERS": kind},
            )

    return harness


@contextlib.contextmanager
def local_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderUnderTest]:
    from tests.local_support import local_provider

    with local_provider(tmp_path_factory.mktemp("local-sandboxes")) as provider:
        yield ProviderUnderTest(
            provider=provider,
            snapshot_ref="base",
            config={**provider.config_mapping(), "SANDBOX_PROVIDERS": "local"},
        )


@contextlib.contextmanager
def aws_ec2_harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProviderUnderTest]:
    from providers.aws_ec2 import AwsEc2Provider
    from tests.aws_moto import MISSING_AMI, NO_EXEC, moto_server

    with moto_server() as moto:
        config = moto.config(AWS_EC2_HIBERNATION="1")
        yield ProviderUnderTest(
            provider=AwsEc2Provider.from_config(config),
            snapshot_ref=moto.base_ami(),
            missing_snapshot_ref=MISSING_AMI,
            config={**config, "SANDBOX_PROVIDERS": "aws-ec2"},
            no_exec=NO_EXEC,
        )


HARNESSES: dict[str, Harness] = {
    "memory": memory_harness,
    "filestore": filestore_harness,
    "morph": morph_harness,
    "docker": docker_harness,
    "pve-lxc": _pve_harness("pve-lxc"),
    "pve-vm": _pve_harness("pve-vm"),
    "local": local_harness,
    "aws-ec2": aws_ec2_harness,
}
