"""moto, the AWS emulator, as a real HTTP server on 127.0.0.1 for the aws-ec2 tests.

The provider talks to it through boto3 exactly as it would talk to AWS (signed HTTP
requests to ``AWS_EC2_ENDPOINT_URL``). moto keeps EC2, SSM and CloudWatch state in
memory; it does not run instances, so nothing inside one ever executes: SSM Run Command
answers every command with success and empty output (tests/conformance skips what needs
a real exec, saying so). See docs/providers/aws-ec2.md, "What the tests verify".
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass

REGION = "us-east-1"
#: A well-formed AMI id that moto does not hold.
MISSING_AMI = "ami-0000000000000dead"
#: Why exec-dependent tests skip against moto (the harness hands it to the conformance suite).
NO_EXEC = "moto records SSM Run Command requests but executes nothing (docs/providers/aws-ec2.md)"


@dataclass
class MotoServer:
    url: str

    def config(self, **extra: str) -> dict[str, str]:
        """The provider's settings pointing at this server (fake credentials: moto takes any)."""
        return {
            "AWS_EC2_REGION": REGION,
            "AWS_EC2_ENDPOINT_URL": self.url,
            "AWS_EC2_ACCESS_KEY_ID": "testing",
            "AWS_EC2_SECRET_ACCESS_KEY": "testing-secret",
            "AWS_EC2_POLL_INTERVAL": "0.01",
            **extra,
        }

    def client(self, service: str):
        import boto3

        return boto3.client(
            service,
            endpoint_url=self.url,
            region_name=REGION,
            aws_access_key_id="testing",
            aws_secret_access_key="testing-secret",
        )

    def base_ami(self) -> str:
        """An AMI moto ships (Amazon Linux), as an imported version's reference."""
        images = self.client("ec2").describe_images(
            Owners=["amazon"], Filters=[{"Name": "name", "Values": ["amzn*"]}]
        )["Images"]
        return sorted(i["ImageId"] for i in images)[0]

    def live_instances(self) -> set[str]:
        """Every instance moto holds that is not terminated."""
        answer = self.client("ec2").describe_instances(
            Filters=[
                {
                    "Name": "instance-state-name",
                    "Values": ["pending", "running", "stopping", "stopped"],
                }
            ]
        )
        return {i["InstanceId"] for r in answer["Reservations"] for i in r["Instances"]}

    def images(self) -> set[str]:
        answer = self.client("ec2").describe_images(Owners=["self"])
        return {i["ImageId"] for i in answer["Images"]}


@contextlib.contextmanager
def moto_server() -> Iterator[MotoServer]:
    """A fresh moto server on a free loopback port, stopped afterwards."""
    # A dev dependency (pyproject.toml), always installed with the tests: no skip.
    from moto.server import ThreadedMotoServer

    # The server logs every request; the tests' output does not need them.
    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield MotoServer(url=f"http://{host}:{port}")
    finally:
        server.stop()
