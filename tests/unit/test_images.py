"""Image fetching: what is refused (SSRF, traversal, limits, non-images) and what works."""

import io
import socket

import pytest
import requests
from PIL import Image

from backend.images import ImageCache, ImageError, ImageLoader, decode_image, redact_url
from backend.label_studio_auth import LabelStudioAuth

from ..conftest import LEGACY_TOKEN, make_settings, png_bytes


@pytest.fixture
def loader(tmp_path, image_server):
    def build(**overrides):
        overrides.setdefault("fetch_allow_hosts", f"127.0.0.1:{image_server.port}")
        return ImageLoader(make_settings(tmp_path, **overrides))

    return build


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:9/x.png",
        "http://localhost/x.png",
        "http://10.0.0.1/x.png",
        "http://172.16.5.4/x.png",
        "http://192.168.1.1/x.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]/x.png",
        "http://[fe80::1]/x.png",
        "http://[::ffff:127.0.0.1]/x.png",
        "http://0.0.0.0/x.png",
        "http://172.31.255.254/x.png",
        "http://10.255.255.254:8080/x.png",
        "http://100.64.0.1/x.png",  # carrier-grade NAT
        "http://[fc00::1]/x.png",  # IPv6 unique local
        "http://[::]/x.png",
        "http://2130706433/x.png",  # 127.0.0.1 as one decimal number
        "http://0x7f000001/x.png",  # ... in hexadecimal
        "http://0177.0.0.1/x.png",  # ... with an octal first byte
        "http://127.1/x.png",  # ... shortened
        "http://LocalHost:9090/x.png",  # a name resolving to loopback, in mixed case
        "https://127.0.0.1/x.png",
    ],
)
def test_private_addresses_are_refused(loader, url):
    with pytest.raises(ImageError, match="refused"):
        loader(fetch_allow_hosts="").read_bytes(url)


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/", "s3://bucket/key.png", "ftp://x/y.png"])
def test_other_schemes_are_refused(loader, url):
    with pytest.raises(ImageError, match="not supported"):
        loader().read_bytes(url)


def test_redirect_to_a_private_address_is_refused(loader, image_server):
    with pytest.raises(ImageError, match="refused: 10.1.2.3"):
        loader().read_bytes(f"{image_server.url}/redirect-private")


def test_redirect_loop_stops(loader, image_server):
    with pytest.raises(ImageError, match="too many redirects"):
        loader().read_bytes(f"{image_server.url}/redirect-loop")


def test_timeout_and_http_errors(loader, image_server):
    with pytest.raises(ImageError, match="ReadTimeout"):
        loader(fetch_timeout=0.5).read_bytes(f"{image_server.url}/slow")
    with pytest.raises(ImageError, match="HTTP 404"):
        loader().read_bytes(f"{image_server.url}/missing")


def test_allowed_http_download_is_cached(loader, image_server, shapes):
    name = shapes["test"][0].path.split("/")[-1]
    url = f"{image_server.url}/test/{name}?X-Signature=secret"
    first = loader()
    image = first.load(url)
    assert image.size == (128, 128) and image.mode == "RGB"
    assert first.cache.get(url) is not None


def test_size_limit(loader, image_server, shapes):
    name = shapes["test"][0].path.split("/")[-1]
    with pytest.raises(ImageError, match="size limit"):
        loader(max_image_bytes=100).read_bytes(f"{image_server.url}/test/{name}")


def test_local_paths_only_under_the_root(loader, shapes, tmp_path):
    root = shapes["root"] / "test"
    with pytest.raises(ImageError, match="LOCAL_FILES_ROOT"):
        loader().read_bytes(shapes["test"][0].path)
    allowed = loader(local_files_root=str(root))
    assert allowed.load(shapes["test"][0].path).size == (128, 128)
    assert allowed.load(shapes["test"][0].path.split("/")[-1]).size == (128, 128)
    for bad in ["../train/" + shapes["train"][0].path.split("/")[-1], "/etc/passwd", str(root / ".." / "train")]:
        with pytest.raises(ImageError, match="outside LOCAL_FILES_ROOT"):
            allowed.read_bytes(bad)
    with pytest.raises(ImageError, match="no such file"):
        allowed.read_bytes("nope.png")
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "escape.png").symlink_to(shapes["train"][0].path)  # a link out of the root
    with pytest.raises(ImageError, match="outside LOCAL_FILES_ROOT"):
        loader(local_files_root=str(tmp_path / "root")).read_bytes("escape.png")


def test_label_studio_urls_need_the_configured_host(loader):
    with pytest.raises(ImageError, match="set LABEL_STUDIO_URL"):
        loader().read_bytes("/data/upload/1/abc-x.png")


@pytest.mark.parametrize("token_kind", ["legacy", "personal access token"])
def test_label_studio_downloads_with_either_token(tmp_path, image_server, shapes, token_kind):
    token = LEGACY_TOKEN if token_kind == "legacy" else image_server.refresh_token
    settings = make_settings(tmp_path, label_studio_url=image_server.url, label_studio_api_key=token)
    loader = ImageLoader(settings, LabelStudioAuth(image_server.url, token))
    name = shapes["test"][1].path.split("/")[-1]
    image = loader.load(f"/data/upload/1/test/{name}")
    assert image.size == (128, 128)
    expected = f"Token {LEGACY_TOKEN}" if token_kind == "legacy" else f"Bearer {image_server.access_token}"
    assert image_server.seen_auth[-1] == expected


def test_label_studio_token_is_not_sent_elsewhere(tmp_path, image_server, shapes):
    settings = make_settings(
        tmp_path, label_studio_url="http://127.0.0.2:1", fetch_allow_hosts=f"127.0.0.1:{image_server.port}"
    )
    loader = ImageLoader(settings, lambda: {"Authorization": "Token leaked"})
    name = shapes["test"][1].path.split("/")[-1]
    with pytest.raises(ImageError, match="HTTP 401"):
        loader.read_bytes(f"{image_server.url}/data/upload/1/test/{name}")
    assert image_server.seen_auth[-1] == ""


def _jpeg_with_orientation(size, orientation):
    image = Image.new("RGB", size, (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = orientation
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif)
    return buffer.getvalue()


def test_decode_cases():
    good = png_bytes(Image.effect_noise((30, 20), 60).convert("RGB"))
    assert decode_image(good, 10_000).size == (30, 20)
    with pytest.raises(ImageError, match="empty"):
        decode_image(b"", 10_000)
    with pytest.raises(ImageError, match="not an image"):
        decode_image(b"<html>hello</html>", 10_000)
    with pytest.raises(ImageError, match="broken"):
        decode_image(good[: len(good) // 2], 10_000)
    with pytest.raises(ImageError, match="over the limit"):
        decode_image(good, 599)
    # EXIF orientation 6 (rotate 90 degrees) swaps the sides, as a browser shows it.
    assert decode_image(_jpeg_with_orientation((40, 10), 6), 10_000).size == (10, 40)
    for mode in ["RGBA", "P", "CMYK", "L", "I;16"]:
        assert decode_image(png_or_tiff(Image.new(mode, (8, 8))), 10_000).mode == "RGB"


def png_or_tiff(image):
    buffer = io.BytesIO()
    image.save(buffer, format="TIFF" if image.mode == "CMYK" else "PNG")
    return buffer.getvalue()


def test_cache_evicts_oldest_past_the_cap(tmp_path):
    cache = ImageCache(tmp_path / "cache", max_bytes=250)
    for index in range(5):
        cache.put(f"http://x/{index}", bytes(100))
    kept = [index for index in range(5) if cache.get(f"http://x/{index}") is not None]
    assert kept and kept == list(range(5))[-len(kept) :] and len(kept) <= 2


def test_redact_url_drops_query_strings():
    assert (
        redact_url("https://bucket.s3.amazonaws.com/a.png?X-Amz-Signature=abc")
        == "https://bucket.s3.amazonaws.com/a.png?..."
    )


def test_dns_rebinding_is_caught_at_the_connection(loader, image_server, monkeypatch):
    """The name resolves to a public address for the check, then to loopback for the connection.
    The control: a plain session, without the connection check, does reach the loopback server."""
    real = socket.getaddrinfo
    answers: list[str] = []

    def rebinding(host, port, *args, **kwargs):
        if host == "rebind.example":
            address = answers.pop(0) if answers else "127.0.0.1"
            return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port))]
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", rebinding)
    url = f"http://rebind.example:{image_server.port}/missing"
    guarded = loader()
    answers.append("93.184.216.34")
    with pytest.raises(ImageError, match="refused: rebind.example connected to the non-public address 127.0.0.1"):
        guarded.read_bytes(url)
    guarded.session = requests.Session()
    answers.append("93.184.216.34")
    with pytest.raises(ImageError, match="answered HTTP 404"):  # reached the loopback server
        guarded.read_bytes(url)


def test_concurrent_downloads_never_trip_over_each_others_cache_files(tmp_path):
    """Eight threads filling a small cache at once: an eviction once stat()ed another thread's
    temporary file as it was renamed and failed that download with FileNotFoundError."""
    import threading

    from backend.images import ImageCache

    cache = ImageCache(tmp_path / "cache", 10_000)
    errors: list[str] = []

    def fill(worker: int) -> None:
        try:
            for i in range(200):
                cache.put(f"http://h/{worker}/{i}.png", b"x" * 700)
        except Exception as error:  # noqa: BLE001 - any failure is the bug
            errors.append(repr(error))

    threads = [threading.Thread(target=fill, args=(w,)) for w in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert sum(p.stat().st_size for p in (tmp_path / "cache").iterdir()) <= 10_000
