"""The Authorization header for downloads from Label Studio.

label-studio-sdk tells a legacy token from a personal access token (a JWT refresh token) and
exchanges the latter for short-lived access tokens, refreshing them when they expire. Each
access token it hands out is registered with the log redaction as soon as it is seen.
"""

from __future__ import annotations

from label_studio_sdk import LabelStudio

from .logging_setup import register_secret


class LabelStudioAuth:
    def __init__(self, url: str, api_key: str):
        self._client = LabelStudio(base_url=url, api_key=api_key)
        self._last = ""

    def __call__(self) -> dict[str, str]:
        # The SDK has no public accessor for the header it sends ("Token <key>" or "Bearer <fresh
        # access token>"); its public tokens.refresh() only exchanges a token, without the legacy
        # check, the cache or the expiry, so the private wrapper stays.
        header = self._client._client_wrapper.get_headers()["Authorization"]
        if header != self._last:
            register_secret(header.partition(" ")[2])
            self._last = header
        return {"Authorization": header}
