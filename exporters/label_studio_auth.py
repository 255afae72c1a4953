"""The Authorization header for calls to Label Studio that label-studio-sdk has no method for
(file downloads, the model-versions endpoint).

A legacy token goes as ``Token <key>``. A personal access token is a JWT refresh token: it is
exchanged for a short-lived access token at Label Studio's ``POST /api/token/refresh/`` (one
plain call on a client of our own, to the configured host only, no redirects followed), kept
until shortly before it expires, and sent as ``Bearer <access token>``. Each new access token
is handed to ``on_new_token`` (the service registers it with its log redaction).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
import jwt

RENEW_BEFORE_S = 30.0  # renew an access token this long before it expires
EXCHANGE_TIMEOUT_S = 30.0


def _claims(token: str) -> dict:
    """A JWT's claims, unverified (Label Studio checks them), or {} for a legacy token."""
    try:
        return jwt.decode(token, options={"verify_signature": False})
    except jwt.InvalidTokenError:
        return {}


class LabelStudioAuth:
    def __init__(
        self,
        url: str,
        api_key: str,
        on_new_token: Callable[[str], None] = lambda token: None,
        http: httpx.Client | None = None,
    ):
        self._key = api_key
        self._personal = _claims(api_key).get("token_type") == "refresh"
        self._exchange_url = url.rstrip("/") + "/api/token/refresh/"
        self._http = http  # made on the first exchange: a legacy token never needs one
        self._on_new_token = on_new_token
        self._access, self._expires = "", 0.0
        self._lock = threading.Lock()

    def __call__(self) -> dict[str, str]:
        if not self._personal:
            return {"Authorization": f"Token {self._key}"}
        with self._lock:  # one exchange when many threads find the token stale at once
            if time.time() >= self._expires - RENEW_BEFORE_S:
                access = self._exchange()
                self._on_new_token(access)
                self._access, self._expires = access, float(_claims(access).get("exp", 0))
            return {"Authorization": f"Bearer {self._access}"}

    def _exchange(self) -> str:
        if self._http is None:
            self._http = httpx.Client(timeout=EXCHANGE_TIMEOUT_S, follow_redirects=False)
        response = self._http.post(self._exchange_url, json={"refresh": self._key})
        response.raise_for_status()
        try:
            access = response.json().get("access")
        except (ValueError, AttributeError):  # not JSON, or not an object
            access = None
        if not isinstance(access, str) or not access:
            raise RuntimeError(f"Label Studio's token exchange answered no access token (HTTP {response.status_code})")
        return access
