"""The narrow collaborator instances hold: boto3 clients, the settings, typed errors.

boto3 is imported here, on first use only, so configuring (or not using) the provider
does not need it installed. Every AWS call goes through ``Ec2Backend.call``, which turns
whatever botocore raises into a typed provider error without a credential in it.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from providers.aws_ec2.settings import AwsEc2Settings
from providers.errors import (
    Conflict,
    InvalidState,
    NotFound,
    OperationFailed,
    ProviderError,
    QuotaExceeded,
    Timeout,
    Unavailable,
)

#: Tag keys: ``sandboxes:<key>`` holds the control plane's metadata (``Instance.metadata``),
#: the others are the provider's own bookkeeping.
META_PREFIX = "sandboxes:"
POWER_TAG = "sandboxes-power"  # "hibernated" while stopped by hibernate
SERVICE_PREFIX = "sandboxes-service:"  # one per exposed service: name -> port
IMAGE_TAG = "sandboxes-image"  # on AMIs (and their EBS snapshots) this provider made

#: Instance states that count as gone: ``delete`` terminated it (EC2 keeps showing a
#: terminated instance for about an hour).
GONE_STATES = frozenset({"shutting-down", "terminated"})
LIVE_STATES = ("pending", "running", "stopping", "stopped")
#: Seconds during which a just-launched instance may still read as "does not exist".
SETTLE = 60.0

_NOT_FOUND = ("NotFound", "Malformed", "InvalidAMIID.Unavailable", "InvalidInstanceID")
_QUOTA = (
    "InsufficientInstanceCapacity",
    "InstanceLimitExceeded",
    "VcpuLimitExceeded",
    "MaxSpotInstanceCountExceeded",
    "InsufficientFreeAddressesInSubnet",
    "ResourceLimitExceeded",
)
_BUSY = (
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "TooManyRequestsException",
    "ServiceUnavailable",
    "Unavailable",
    "InternalError",
    "InternalFailure",
    "InternalServerError",
)
_STATE = ("IncorrectInstanceState", "IncorrectState", "InvalidInstanceState")


def redact(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "[redacted]")
    return text


def typed_error(exc: Exception, what: str, *, ref: str | None, secrets: tuple[str, ...]):
    """The provider error for something botocore raised while doing ``what``."""
    from botocore import exceptions as bx

    if isinstance(exc, bx.ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        detail = redact(f"{what}: {code}: {error.get('Message', '')}".strip(), secrets)
        if any(part in code for part in _NOT_FOUND):
            return NotFound(detail, ref=ref)
        if code in _QUOTA:
            return QuotaExceeded(detail, ref=ref)
        if code in _BUSY or status >= 500:
            return Unavailable(detail, ref=ref)
        if code in _STATE:
            return InvalidState(detail, ref=ref)
        if code in ("IdempotentParameterMismatch", "ResourceInUse", "DependencyViolation"):
            return Conflict(detail, ref=ref)
        return OperationFailed(detail, ref=ref)
    if isinstance(exc, bx.NoCredentialsError | bx.PartialCredentialsError):
        return OperationFailed(
            f"{what}: no AWS credentials (set AWS_EC2_ACCESS_KEY_ID and "
            "AWS_EC2_SECRET_ACCESS_KEY or AWS_EC2_PROFILE, or give the control plane the usual "
            "AWS credentials or an instance role)",
            ref=ref,
        )
    if isinstance(exc, bx.ReadTimeoutError | bx.ConnectTimeoutError):
        return Timeout(f"{what}: AWS did not answer in time", ref=ref)
    if isinstance(exc, bx.EndpointConnectionError | bx.ConnectionError | bx.HTTPClientError):
        return Unavailable(redact(f"{what}: cannot reach AWS ({exc})", secrets), ref=ref)
    if isinstance(exc, bx.BotoCoreError):
        return OperationFailed(redact(f"{what}: {exc}", secrets), ref=ref)
    return None


class Ec2Backend:
    """The EC2, SSM and CloudWatch clients of one region, made on first use."""

    def __init__(self, settings: AwsEc2Settings) -> None:
        self.settings = settings
        self._lock = threading.Lock()
        self._clients: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Ec2Backend(region={self.settings.region!r})"

    def client(self, service: str) -> Any:
        with self._lock:
            if service not in self._clients:
                self._clients[service] = self._make(service)
            return self._clients[service]

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    @property
    def ssm(self) -> Any:
        return self.client("ssm")

    @property
    def cloudwatch(self) -> Any:
        return self.client("cloudwatch")

    def _make(self, service: str) -> Any:
        import boto3
        from botocore.config import Config

        s = self.settings
        session = boto3.session.Session(
            aws_access_key_id=s.access_key_id,
            aws_secret_access_key=s.secret_access_key,
            aws_session_token=s.session_token,
            profile_name=s.profile,
            region_name=s.region,
        )
        config = Config(
            connect_timeout=10,
            read_timeout=60,
            # botocore retries throttling and dropped connections itself, briefly; what
            # still fails comes out as Unavailable and the services retry the operation.
            retries={"max_attempts": 3, "mode": "standard"},
            user_agent_extra="sandboxes-aws-ec2",
        )
        return session.client(service, endpoint_url=s.endpoint_url, config=config)

    # --- calls --------------------------------------------------------------------------

    @contextlib.contextmanager
    def errors(self, what: str, *, ref: str | None = None) -> Iterator[None]:
        try:
            yield
        except ProviderError:
            raise
        except Exception as exc:
            typed = typed_error(exc, what, ref=ref, secrets=self.settings.secrets)
            if typed is None:
                raise
            raise typed from None

    def call(self, what: str, fn: Callable[[], Any], *, ref: str | None = None) -> Any:
        with self.errors(what, ref=ref):
            return fn()

    def describe(self, ref: str) -> dict:
        """The instance as EC2 describes it; NotFound when it is gone or not ours."""
        answer = self.call(
            f"describe instance {ref}",
            lambda: self.ec2.describe_instances(InstanceIds=[ref]),
            ref=ref,
        )
        for reservation in answer.get("Reservations", []):
            for raw in reservation.get("Instances", []):
                if raw.get("InstanceId") != ref:
                    continue
                if raw.get("State", {}).get("Name") in GONE_STATES:
                    break
                if not any(t["Key"] == META_PREFIX + "sandbox_id" for t in raw.get("Tags", [])):
                    # Not made by this control plane: never acted on through a reference.
                    break
                return raw
        raise NotFound(f"EC2 instance {ref} does not exist", ref=ref)

    def find(self, filters: list[dict]) -> list[dict]:
        """Live instances matching ``filters`` (every page)."""
        found: list[dict] = []
        token: str | None = None
        wanted = [*filters, {"Name": "instance-state-name", "Values": list(LIVE_STATES)}]
        while True:
            kwargs: dict[str, Any] = {"Filters": wanted}
            if token:
                kwargs["NextToken"] = token
            page = self.call("list instances", lambda kw=kwargs: self.ec2.describe_instances(**kw))
            for reservation in page.get("Reservations", []):
                found.extend(reservation.get("Instances", []))
            token = page.get("NextToken")
            if not token:
                return found

    def wait_for(self, ref: str, wanted: set[str], *, what: str, new: bool = False) -> dict:
        """Poll until the instance's EC2 state is one of ``wanted``.

        A read that fails for a while (throttling, a dropped connection) is asked again
        until the deadline. ``new``: the instance was just launched, and EC2's reads are
        eventually consistent, so "does not exist" is believed only after ``SETTLE``
        seconds.
        """
        started = time.monotonic()
        deadline = started + self.settings.boot_timeout
        delay = min(self.settings.poll_interval, 0.05)
        while True:
            try:
                raw = self.describe(ref)
            except NotFound:
                if not new or time.monotonic() - started > SETTLE:
                    raise
                raw = None
            except (Unavailable, Timeout):
                if time.monotonic() > deadline:
                    raise
                raw = None
            state = raw["State"]["Name"] if raw else "unknown"
            if raw is not None and state in wanted:
                return raw
            if time.monotonic() > deadline:
                raise Timeout(f"EC2 instance {ref} still {state} after {what}", ref=ref)
            time.sleep(delay)
            delay = min(delay * 2, self.settings.poll_interval)

    def terminate(self, ref: str) -> None:
        """Terminate an instance; one that is already gone is fine."""
        try:
            self.call(
                f"terminate instance {ref}",
                lambda: self.ec2.terminate_instances(InstanceIds=[ref]),
                ref=ref,
            )
        except NotFound:
            return
