"""The ``aws-ec2`` provider (boto3, imported on first use): see ``provider``."""

from providers.aws_ec2.provider import AwsEc2Provider

__all__ = ["AwsEc2Provider"]
