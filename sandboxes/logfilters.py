"""Logging filters, importable while the settings are loaded (no models here)."""

import logging

HEARTBEAT_TASK = "sandboxes.tasks.worker_heartbeat"


class QuietHeartbeats(logging.Filter):
    """Keeps django-q2's INFO lines about the worker's heartbeat tasks (a few every
    ``WORKER_HEARTBEAT_SECONDS``) out of the log."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno > logging.INFO or HEARTBEAT_TASK not in record.getMessage()
