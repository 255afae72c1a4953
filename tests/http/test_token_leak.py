"""The Label Studio token goes to Label Studio's file paths and nowhere else: not to a host that
a second URL parser reads out of the same string, not along a redirect, not to Label Studio's API."""

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from PIL import Image

from backend.images import ImageError, ImageLoader
from backend.label_studio_auth import LabelStudioAuth

from ..conftest import LEGACY_TOKEN, SHAPES_CONFIG, make_settings, png_bytes

PNG = png_bytes(Image.new("RGB", (40, 30), "white"))
TOKEN = f"Token {LEGACY_TOKEN}"


class StandIn:
    """A loopback HTTP server that records (path, Authorization) of every request.
    ``redirects`` maps a path to a 302 target; anything else gets ``answer(path, auth)``."""

    def __init__(self, answer):
        self.seen: list[tuple[str, str]] = []
        self.redirects: dict[str, str] = {}
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                auth = self.headers.get("Authorization", "")
                server.seen.append((self.path, auth))
                path = self.path.split("?")[0]
                if path in server.redirects:
                    status, headers, body = 302, {"Location": server.redirects[path]}, b""
                else:
                    status, body = answer(path, auth)
                    headers = {"Content-Type": "image/png"}
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.host = f"127.0.0.1:{self.httpd.server_address[1]}"
        self.url = f"http://{self.host}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def tokens(self) -> list[str]:
        return [path for path, auth in self.seen if auth]


def label_studio_answer(path: str, auth: str) -> tuple[int, bytes]:
    if not path.startswith("/data/upload/"):
        return 404, b""
    return (200, PNG) if auth == TOKEN else (401, b"")


@pytest.fixture
def servers():
    ls = StandIn(label_studio_answer)
    evil = StandIn(lambda path, auth: (200, PNG))  # serves an "image" anywhere: a leak would succeed
    yield ls, evil
    ls.httpd.shutdown()
    evil.httpd.shutdown()


@pytest.fixture
def loader(tmp_path, servers):
    ls, evil = servers
    settings = make_settings(
        tmp_path, label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, fetch_allow_hosts=evil.host
    )
    return ImageLoader(settings, LabelStudioAuth(ls.url, LEGACY_TOKEN))


def attacks(ls: StandIn, evil: StandIn) -> dict[str, str]:
    """reference -> what the error says."""
    evil.redirects["/to-backslash"] = f"http://{evil.host}\\@{ls.host}/data/upload/1/a.png"
    evil.redirects["/to-label-studio"] = f"{ls.url}/data/upload/1/a.png"
    return {
        f"http://{evil.host}\\@{ls.host}/data/upload/1/a.png": "backslash",
        f"http://{evil.host}\\\\@{ls.host}/data/upload/1/a.png": "backslash",
        f"http://{evil.host}%5C@{ls.host}/data/upload/1/a.png": "user@ part",
        f"http://{ls.host}@{evil.host}/data/upload/1/a.png": "user@ part",
        f"{evil.url}/to-backslash": "backslash",  # the redirect hop is parsed like the first URL
        f"{evil.url}/to-label-studio": "HTTP 401",  # a redirect onto Label Studio carries no token
        f"{ls.url}/data/../api/projects/": "'..' segments",
        f"{ls.url}/data/upload/%2e%2e/%2E%2E/api/projects/": "'..' segments",
        f"{ls.url}/data/upload/1%2F..%2F..%2Fapi/projects/": "'..' segments",
        f"{ls.url}/api/projects/": "not one of its file paths",
        f"{ls.url}/data/upload/1/a.png\r\nX-Injected: 1": "control characters",
        f"http://{evil.host}/data/upload/1/a.png#\x00": "control characters",
    }


def test_the_token_never_leaves_label_studio_file_paths(loader, servers):
    ls, evil = servers
    for reference, why in attacks(ls, evil).items():
        with pytest.raises(ImageError, match=why):
            loader.read_bytes(reference)
    assert evil.seen and evil.tokens() == []
    assert all(path.startswith("/data/upload/") for path in ls.tokens()), ls.seen


def test_a_redirect_from_label_studio_to_another_host_drops_the_token(loader, servers):
    ls, evil = servers
    ls.redirects["/data/upload/1/moved.png"] = f"{evil.url}/elsewhere.png"
    assert loader.load(f"{ls.url}/data/upload/1/moved.png").size == (40, 30)
    assert ls.seen == [("/data/upload/1/moved.png", TOKEN)]
    assert evil.seen == [("/elsewhere.png", "")]


def test_the_guard_at_the_connection_refuses_a_wrong_decision(loader, servers):
    """Should the per-hop decision ever say yes for another host, the connection itself, which
    sees its real host and request line, refuses to write the header."""
    ls, evil = servers
    loader._label_studio_file = lambda *args: True
    with pytest.raises(ImageError, match="token would have gone to 127.0.0.1"):
        loader.read_bytes(f"{evil.url}/data/upload/1/a.png")
    with pytest.raises(ImageError, match="token would have gone"):
        loader.read_bytes(f"{ls.url}/api/projects/")
    assert evil.seen == [] and ls.seen == []


def test_legit_label_studio_files_still_get_the_token(loader, servers):
    ls, _ = servers
    assert loader.load("/data/upload/1/a.png").size == (40, 30)
    assert loader.load(f"{ls.url}/data/upload/1/b.png?x=1").size == (40, 30)
    assert ls.seen == [("/data/upload/1/a.png", TOKEN), ("/data/upload/1/b.png?x=1", TOKEN)]


def test_every_attack_is_a_per_task_error_in_predict(make_client, servers):
    ls, evil = servers
    cases = attacks(ls, evil)
    client = make_client(label_studio_url=ls.url, label_studio_api_key=LEGACY_TOKEN, fetch_allow_hosts=evil.host)
    references = [*cases, "/data/upload/1/good.png"]
    tasks = [{"id": i, "data": {"picture": reference}} for i, reference in enumerate(references)]
    answer = client.post("/predict", json={"tasks": tasks, "label_config": SHAPES_CONFIG})
    assert answer.status_code == 200
    results = answer.get_json()["results"]
    for (reference, why), result in zip(cases.items(), results, strict=False):
        assert why in result.get("error", ""), (reference, result)
        assert "\n" not in result["error"] and "\r" not in result["error"] and "\x00" not in result["error"]
    assert "error" not in results[-1], results[-1]  # the control: a real upload loads
    assert evil.tokens() == []
    assert ls.tokens() == ["/data/upload/1/good.png"]
