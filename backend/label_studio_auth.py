"""The Authorization header for downloads from Label Studio: exporters' LabelStudioAuth (legacy
tokens, and personal access tokens exchanged at Label Studio's /api/token/refresh/),
with each access token it obtains registered with the log redaction as soon as it is seen.
"""

from __future__ import annotations

from exporters.label_studio_auth import LabelStudioAuth as _Auth

from .logging_setup import register_secret


class LabelStudioAuth(_Auth):
    def __init__(self, url: str, api_key: str):
        super().__init__(url, api_key, on_new_token=register_secret)
