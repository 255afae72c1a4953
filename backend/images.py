"""Getting task images safely: Label Studio files, plain http(s) URLs and local paths.

Refused: other schemes, private/loopback/link-local addresses (SSRF) other than Label Studio's
host and the configured allow-list, path traversal, files over the byte limit, images over the
pixel limit, anything Pillow cannot read. Each refusal is an ``ImageError`` saying why.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
from PIL import Image, ImageOps, UnidentifiedImageError

from .settings import Settings

MAX_REDIRECTS = 5
# Pillow's own bomb check would fire first on big images; ours gives the clearer message.
Image.MAX_IMAGE_PIXELS = None


class ImageError(ValueError):
    """An image that cannot be used; the message says why."""


def redact_url(url: str) -> str:
    """A URL fit for logs: query strings (presigned signatures, tokens) cut off."""
    parts = urlsplit(url)
    return (
        f"{parts.scheme}://{parts.netloc}{parts.path}" + ("?..." if parts.query else "") if parts.scheme else parts.path
    )


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    return (parts.hostname or "").lower(), parts.port or (443 if parts.scheme == "https" else 80)


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """An RGB image, EXIF orientation applied (as browsers, and so Label Studio, show it)."""
    if not data:
        raise ImageError("the image file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"the image is {width}x{height} pixels, over the limit of {max_pixels} (MAX_IMAGE_PIXELS)")
        image = ImageOps.exif_transpose(image)
        return image.convert("RGB")
    except UnidentifiedImageError:
        raise ImageError("the file is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"the image is broken: {error}") from None


class ImageCache:
    """Downloaded files on disk, named by the URL's hash; oldest evicted past the size cap."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._total = sum(p.stat().st_size for p in directory.iterdir() if p.is_file())

    def path(self, url: str) -> Path:
        return self.directory / hashlib.sha256(url.encode()).hexdigest()

    def get(self, url: str) -> bytes | None:
        try:
            return self.path(url).read_bytes()
        except OSError:
            return None

    def put(self, url: str, data: bytes, force: bool = False) -> None:
        if len(data) > self.max_bytes and not force:
            return
        path = self.path(url)
        tmp = path.with_suffix(f".{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        with self._lock:
            self._total += len(data)
            if self._total > self.max_bytes:
                self._evict()

    def _evict(self) -> None:
        files = sorted((p for p in self.directory.iterdir() if p.is_file()), key=lambda p: p.stat().st_mtime)
        self._total = sum(p.stat().st_size for p in files)
        for path in files:
            if self._total <= 0.9 * self.max_bytes:
                break
            size = path.stat().st_size
            path.unlink(missing_ok=True)
            self._total -= size


def _non_public(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address when it is not a public one (loopback, private, link-local, ...), else None."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return None if ip.is_global else ip


def _guarded_session(trusted: Callable[[str, int], bool]) -> requests.Session:
    """A session whose every connection is checked once connected, before a byte is sent: the
    peer must be a public address unless ``trusted(host, port)``. The check before the request
    resolved the name once; this one sees the address actually reached, so a name that
    resolves to a public address first and to a private one next (DNS rebinding) is refused."""

    def check(connection: urllib3.connection.HTTPConnection, sock: socket.socket) -> socket.socket:
        if not trusted(connection.host.lower(), connection.port):
            peer = _non_public(sock.getpeername()[0])
            if peer is not None:
                sock.close()
                raise ImageError(f"refused: {connection.host} connected to the non-public address {peer}")
        return sock

    class HTTPConnection(urllib3.connection.HTTPConnection):
        def _new_conn(self):
            return check(self, super()._new_conn())

    class HTTPSConnection(urllib3.connection.HTTPSConnection):
        def _new_conn(self):
            return check(self, super()._new_conn())

    class HTTPPool(urllib3.HTTPConnectionPool):
        ConnectionCls = HTTPConnection

    class HTTPSPool(urllib3.HTTPSConnectionPool):
        ConnectionCls = HTTPSConnection

    class Adapter(requests.adapters.HTTPAdapter):
        def init_poolmanager(self, *args, **kwargs):
            super().init_poolmanager(*args, **kwargs)
            self.poolmanager.pool_classes_by_scheme = {"http": HTTPPool, "https": HTTPSPool}

    session = requests.Session()
    session.trust_env = False  # an environment proxy would be the peer, hiding the real address
    session.mount("http://", Adapter())
    session.mount("https://", Adapter())
    return session


class ImageLoader:
    """Turns a task's image reference into a decoded image, or an ``ImageError``."""

    def __init__(self, settings: Settings, label_studio_auth: Callable[[], dict[str, str]] | None = None):
        self.settings = settings
        self.label_studio_auth = label_studio_auth
        self.cache = ImageCache(settings.data_path / "image_cache", settings.image_cache_max_bytes)
        self.ls_url = settings.label_studio_url.rstrip("/")
        self.ls_host = _host_port(self.ls_url) if self.ls_url else None
        self.allowed_hosts = {h.strip().lower() for h in settings.fetch_allow_hosts.split(",") if h.strip()}
        self.local_root = Path(settings.local_files_root).resolve() if settings.local_files_root else None
        self.session = _guarded_session(self._trusted)

    def load(self, reference: object) -> Image.Image:
        return decode_image(self.read_bytes(reference), self.settings.max_image_pixels)

    def fetch_to_file(self, reference: object) -> tuple[Path, tuple[int, int]]:
        """(a local file holding the image (the cache for downloads), its displayed size),
        checked to decode."""
        data = self.read_bytes(reference)
        size = decode_image(data, self.settings.max_image_pixels).size
        if (
            isinstance(reference, str)
            and urlsplit(reference.strip()).scheme == ""
            and not reference.startswith("/data/")
        ):
            return self._local_path(reference.strip()), size
        url = self.ls_url + reference.strip() if reference.strip().startswith("/data/") else reference.strip()
        path = self.cache.path(url)
        if not path.exists():  # evicted, or larger than the whole cache: keep it anyway
            self.cache.put(url, data, force=True)
        return path, size

    def read_bytes(self, reference: object) -> bytes:
        if not isinstance(reference, str) or not reference.strip():
            raise ImageError("the task's image field is empty or not a string")
        reference = reference.strip()
        if reference.startswith("/data/"):
            if not self.ls_url:
                raise ImageError(f"{redact_url(reference)} is a Label Studio file; set LABEL_STUDIO_URL to fetch it")
            return self._download(self.ls_url + reference)
        scheme = urlsplit(reference).scheme.lower()
        if scheme in ("http", "https"):
            return self._download(reference)
        if scheme == "":
            return self._read_local(reference)
        raise ImageError(f"URL scheme {scheme!r} is not supported (http, https, Label Studio /data/ URLs, local paths)")

    def _local_path(self, reference: str) -> Path:
        if self.local_root is None:
            raise ImageError("local file paths are not allowed; set LOCAL_FILES_ROOT to a directory to allow them")
        path = Path(reference)
        path = (path if path.is_absolute() else self.local_root / path).resolve()
        if not path.is_relative_to(self.local_root):
            raise ImageError(f"{reference} is outside LOCAL_FILES_ROOT")
        return path

    def _read_local(self, reference: str) -> bytes:
        path = self._local_path(reference)
        if not path.is_file():
            raise ImageError(f"no such file: {reference}")
        if path.stat().st_size > self.settings.max_image_bytes:
            raise ImageError(
                f"{reference} is over the size limit of {self.settings.max_image_bytes} bytes (MAX_IMAGE_BYTES)"
            )
        return path.read_bytes()

    def _is_label_studio(self, url: str) -> bool:
        return self.ls_host is not None and _host_port(url) == self.ls_host

    def _trusted(self, host: str, port: int) -> bool:
        """Label Studio's own host and the allow-list may be private addresses."""
        return (host, port) == self.ls_host or host in self.allowed_hosts or f"{host}:{port}" in self.allowed_hosts

    def _check_address(self, url: str) -> None:
        host, port = _host_port(url)
        if not host:
            raise ImageError(f"{redact_url(url)} has no host")
        if self._trusted(host, port):
            return
        try:
            infos = socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as error:
            raise ImageError(f"cannot resolve host {host}: {error}") from None
        for info in infos:
            address = _non_public(info[4][0])
            if address is not None:
                raise ImageError(f"refused: {host} resolves to the non-public address {address}")

    def _download(self, url: str) -> bytes:
        cached = self.cache.get(url)
        if cached is not None:
            return cached
        data = self._fetch(url)
        self.cache.put(url, data)
        return data

    def _fetch(self, url: str) -> bytes:
        timeout = self.settings.fetch_timeout
        deadline = time.monotonic() + 3 * timeout
        current = url
        for _hop in range(MAX_REDIRECTS + 1):
            self._check_address(current)
            headers = self.label_studio_auth() if self._is_label_studio(current) and self.label_studio_auth else {}
            try:
                response = self.session.get(
                    current, headers=headers, timeout=timeout, stream=True, allow_redirects=False
                )
            except requests.RequestException as error:
                if isinstance(error.__context__, ImageError):  # the connection's own check refused it
                    raise error.__context__ from None
                raise ImageError(f"cannot download {redact_url(current)}: {type(error).__name__}") from None
            with response:
                if response.is_redirect:
                    current = urljoin(current, response.headers.get("location", ""))
                    if urlsplit(current).scheme not in ("http", "https"):
                        raise ImageError(f"refused: redirect to a non-http URL from {redact_url(url)}")
                    continue
                if response.status_code != 200:
                    raise ImageError(f"downloading {redact_url(current)} answered HTTP {response.status_code}")
                return self._read_body(response, current, deadline)
        raise ImageError(f"too many redirects from {redact_url(url)}")

    def _read_body(self, response: requests.Response, url: str, deadline: float) -> bytes:
        limit = self.settings.max_image_bytes
        if int(response.headers.get("content-length") or 0) > limit:
            raise ImageError(f"{redact_url(url)} is over the size limit of {limit} bytes (MAX_IMAGE_BYTES)")
        chunks, size = [], 0
        try:
            # read1 returns whatever has arrived, so a server trickling bytes meets the deadline;
            # iter_content would wait for each whole chunk.
            while chunk := response.raw.read1(65536, decode_content=True):
                size += len(chunk)
                if size > limit:
                    raise ImageError(f"{redact_url(url)} is over the size limit of {limit} bytes (MAX_IMAGE_BYTES)")
                if time.monotonic() > deadline:
                    raise ImageError(f"downloading {redact_url(url)} took too long")
                chunks.append(chunk)
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as error:
            raise ImageError(f"cannot download {redact_url(url)}: {type(error).__name__}") from None
        return b"".join(chunks)
