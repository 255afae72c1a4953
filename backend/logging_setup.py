"""Logging that never prints a secret: every record, traceback included, is scrubbed of the
configured secrets and of those registered while the process runs (short-lived access tokens)."""

from __future__ import annotations

import logging
import threading

_registered: set[str] = set()
_lock = threading.Lock()
_formatter = logging.Formatter()


def register_secret(secret: str) -> None:
    """Scrub this value from every log record from now on (e.g. a freshly exchanged token)."""
    if secret:
        with _lock:
            _registered.add(secret)


def _scrub(text: str, secrets: tuple[str, ...]) -> str:
    for secret in secrets:
        text = text.replace(secret, "***")
    return text


class RedactSecrets(logging.Filter):
    def __init__(self, secrets: tuple[str, ...]):
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        with _lock:
            # Longest first: a secret inside another must not leave the longer one half shown.
            secrets = tuple(sorted({*self.secrets, *_registered}, key=len, reverse=True))
        message = record.getMessage()
        if any(secret in message for secret in secrets):
            record.msg, record.args = _scrub(message, secrets), ()
        if record.exc_info and not record.exc_text:
            # Formatters reuse exc_text when it is set, so the scrubbed traceback is what prints.
            record.exc_text = _formatter.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = _scrub(record.exc_text, secrets)
        if record.stack_info:
            record.stack_info = _scrub(record.stack_info, secrets)
        return True


def configure_logging(level: str, secrets: tuple[str, ...]) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    handler.addFilter(RedactSecrets(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # One line per HTTP call to Label Studio drowns the log; keep their warnings only.
    for chatty in ("httpx", "httpcore", "urllib3"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
