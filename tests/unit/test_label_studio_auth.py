"""Credentials for the calls label-studio-sdk has no method for, through its public API only:
a legacy token as is, a personal access token exchanged once and renewed before it expires,
and raw calls retried like the SDK's own."""

import json
import threading
import time

import httpx
import jwt
import pytest

from exporters import label_studio_api
from exporters.label_studio_api import LabelStudioProject
from exporters.label_studio_auth import RENEW_BEFORE_S, LabelStudioAuth

from ..conftest import JWT_KEY, LEGACY_TOKEN


def token(kind: str, seconds: float, number: int = 0) -> str:
    claims = {"token_type": kind, "exp": int(time.time() + seconds), "n": number}
    return jwt.encode(claims, JWT_KEY, algorithm="HS256")


class FakeExchange:
    """Label Studio's POST /api/token/refresh/, counting its calls."""

    def __init__(self, lifetime: float):
        self.lifetime, self.calls, self.requests = lifetime, 0, []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        self.requests.append((request.method, str(request.url), json.loads(request.content)))
        time.sleep(0.05)  # long enough for other threads to find the token stale too
        return httpx.Response(200, json={"access": token("access", self.lifetime, self.calls)})


def auth_with(lifetime: float) -> tuple[LabelStudioAuth, FakeExchange, list[str]]:
    exchange, seen = FakeExchange(lifetime), []
    http = httpx.Client(transport=httpx.MockTransport(exchange))
    return LabelStudioAuth("http://ls.test/", token("refresh", 3600), seen.append, http=http), exchange, seen


def test_a_legacy_token_goes_as_is():
    never = httpx.Client(transport=httpx.MockTransport(lambda request: pytest.fail("no exchange for a legacy token")))
    assert LabelStudioAuth("http://ls.test", LEGACY_TOKEN, http=never)() == {"Authorization": f"Token {LEGACY_TOKEN}"}


def test_a_personal_token_is_exchanged_once_by_many_threads():
    auth, tokens, seen = auth_with(lifetime=300)
    headers = []
    threads = [threading.Thread(target=lambda: headers.append(auth())) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert tokens.calls == 1 and len(seen) == 1
    assert all(header == {"Authorization": f"Bearer {seen[0]}"} for header in headers)
    assert tokens.requests == [("POST", "http://ls.test/api/token/refresh/", {"refresh": auth._key})]


def test_an_access_token_is_renewed_before_it_expires():
    auth, tokens, seen = auth_with(lifetime=RENEW_BEFORE_S / 2)  # already inside the renewal window
    auth(), auth()
    assert tokens.calls == 2 and seen[0] != seen[1]


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, json={"detail": "no access here"}),
        httpx.Response(200, text="<html>login</html>"),
        httpx.Response(302, headers={"Location": "http://elsewhere.test/api/token/refresh/"}),
    ],
)
def test_an_exchange_without_an_access_token_fails_clearly_and_follows_no_redirect(answer):
    sent = []
    http = httpx.Client(transport=httpx.MockTransport(lambda request: sent.append(request.url.host) or answer))
    auth = LabelStudioAuth("http://ls.test", token("refresh", 3600), http=http)
    with pytest.raises((RuntimeError, httpx.HTTPStatusError), match="no access token|Redirect"):
        auth()
    assert sent == ["ls.test"]  # the refresh token went to the configured host only


@pytest.fixture
def no_sleep(monkeypatch):
    slept: list[float] = []
    monkeypatch.setattr(label_studio_api.time, "sleep", slept.append)
    return slept


def test_raw_calls_carry_the_credentials_and_are_retried(no_sleep):
    answers = iter([httpx.Response(503), httpx.Response(429), httpx.Response(200, json={"p1-v1": 3})])
    seen = []

    def label_studio(request: httpx.Request) -> httpx.Response:
        seen.append((str(request.url), request.headers.get("Authorization")))
        return next(answers)

    client = httpx.Client(transport=httpx.MockTransport(label_studio))
    project = LabelStudioProject("http://ls.test/", LEGACY_TOKEN, 4, retries=3, httpx_client=client)
    assert project.prediction_versions() == {"p1-v1": 3}
    assert seen == [("http://ls.test/api/projects/4/model-versions/", f"Token {LEGACY_TOKEN}")] * 3
    assert no_sleep == [1, 2]


def test_a_raw_call_that_keeps_failing_raises_after_its_retries(no_sleep):
    def down(request: httpx.Request) -> httpx.Response:
        assert json.loads(request.content) == {"model_version": "p1-v1"}
        return httpx.Response(500)

    client = httpx.Client(transport=httpx.MockTransport(down))
    project = LabelStudioProject("http://ls.test", LEGACY_TOKEN, 4, retries=2, httpx_client=client)
    with pytest.raises(httpx.HTTPStatusError):
        project.delete_predictions(["p1-v1"])
    assert no_sleep == [1, 2]
