"""The Authorization header for downloads from Label Studio.

label-studio-sdk tells a legacy token from a personal access token (a JWT refresh token) and
exchanges the latter for short-lived access tokens, refreshing them when they expire.
"""

from __future__ import annotations

from label_studio_sdk import LabelStudio


class LabelStudioAuth:
    def __init__(self, url: str, api_key: str):
        self._client = LabelStudio(base_url=url, api_key=api_key)

    def __call__(self) -> dict[str, str]:
        # The SDK's own header logic: "Token <key>" or "Bearer <fresh access token>".
        return {"Authorization": self._client._client_wrapper.get_headers()["Authorization"]}
