"""Getting task images safely: Label Studio files, plain http(s) URLs and local paths.

Refused: other schemes, private/loopback/link-local addresses (SSRF) other than Label Studio's
file paths and the configured allow-list, URLs that parsers could read differently
(backslashes, user@host, encoded separators in the host, whitespace, control characters, dot
segments), path traversal, files over the byte limit, images over the pixel limit, anything
Pillow cannot read. Each refusal is an ``ImageError`` saying why. The Label Studio token goes
only to Label Studio's own file paths, decided from the one parse the connection is built from.
"""

from __future__ import annotations

import hashlib
import io
import ipaddress
import os
import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit

import requests
import requests.adapters
import urllib3
import urllib3.connection
import urllib3.util
from PIL import Image, UnidentifiedImageError

from .settings import Settings

MAX_REDIRECTS = 5
# Label Studio's file paths, after its base path: uploads, local-storage files, and the
# endpoints that resolve a cloud-storage URI (they proxy it, or redirect to a presigned URL).
LABEL_STUDIO_FILE_PATH = re.compile(r"/data/upload/.+|/data/local-files/?|/(tasks|projects)/\d+/(resolve|presign)/?")
# Encoded slashes, backslashes, dots and percent signs: a server may decode them into a path
# other than the one that was checked.
_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|2e|25)", re.IGNORECASE)
_ORIENTATION_TAG = 0x0112
# EXIF orientation -> the turn that shows the image as a browser (and so Label Studio) does.
_UPRIGHT = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


class ImageError(ValueError):
    """An image that cannot be used; the message says why."""


def printable(text: str) -> str:
    """The text with control characters (newline, ESC, ...) escaped: one honest log line."""
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def redact_url(url: str) -> str:
    """A reference fit for logs and error messages: the query string (presigned signatures,
    tokens) and any user:password@ cut off, control characters escaped."""
    base, query, _ = url.partition("?")
    base = base.split("#", 1)[0]
    scheme, separator, rest = base.partition("://")
    if separator:
        authority, slash, path = rest.partition("/")
        if "@" in authority:
            authority = "***@" + authority.rpartition("@")[2]
        base = f"{scheme}://{authority}{slash}{path}"
    return printable(base) + ("?..." if query else "")


@dataclass(frozen=True)
class Target:
    """A URL parsed once: the request is built from these parts and every check reads them."""

    scheme: str
    host: str  # lower case; an IPv6 address without brackets
    port: int
    explicit_port: bool
    path: str
    query: str

    @property
    def origin(self) -> tuple[str, str, int]:
        return self.scheme, self.host, self.port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        port = f":{self.port}" if self.explicit_port else ""
        return f"{self.scheme}://{host}{port}{self.path}" + (f"?{self.query}" if self.query else "")


def parse_target(url: str) -> Target:
    """The URL's parts, or an ``ImageError`` when parsers could read it two ways: the host
    that is checked must be the host that is connected to."""
    shown = redact_url(url)
    if any(c.isspace() or not c.isprintable() for c in url):
        raise ImageError(f"refused: {shown} holds whitespace or control characters")
    if "\\" in url:
        raise ImageError(f"refused: {shown} holds a backslash (URL parsers disagree on where its host ends)")
    try:
        parts = urlsplit(url)
        port = parts.port
        other = urllib3.util.parse_url(url)
    except ValueError:  # a bad port or bracket; the parsers' own messages repeat the whole URL
        raise ImageError(f"{shown} is not a valid URL (its host or port)") from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise ImageError(f"URL scheme {scheme!r} is not supported (http, https, Label Studio /data/ URLs, local paths)")
    if "@" in parts.netloc:
        raise ImageError(f"refused: {shown} has a user@ part before its host")
    if "%" in parts.netloc:
        raise ImageError(f"refused: {shown} has percent-encoded characters in its host")
    host = parts.hostname or ""
    if not host:
        raise ImageError(f"{shown} has no host")
    default = 443 if scheme == "https" else 80
    if (other.scheme, (other.host or "").strip("[]").lower(), other.port or default) != (scheme, host, port or default):
        raise ImageError(f"refused: {shown}: URL parsers disagree on its host")
    path = parts.path or "/"
    # urllib3 collapses dot segments, servers decode %2e and %2f: the checked path would not be the one served
    if any(segment in (".", "..") for segment in unquote(path).split("/")):
        raise ImageError(f"refused: {shown} has '.' or '..' segments in its path")
    return Target(scheme, host, port or default, port is not None, path, parts.query)


@dataclass(frozen=True)
class Decoded:
    """An image decoded for the model, and the size of the full image as it is shown."""

    image: Image.Image  # RGB, EXIF orientation applied, shrunk by an integer factor
    original_size: tuple[int, int]  # (width, height) of the full image, after EXIF rotation


def decode_image(data: bytes, max_pixels: int) -> Image.Image:
    """An RGB image, EXIF orientation applied (as browsers, and so Label Studio, show it)."""
    return decode_reduced(data, max_pixels).image


def decode_reduced(data: bytes, max_pixels: int, factor_for: Callable[[int, int], int] | None = None) -> Decoded:
    """The image decoded at 1/``factor_for(width, height)`` of its size (1 without it): JPEGs
    decode small directly (draft mode), others are reduced after decoding."""
    if not data:
        raise ImageError("the image file is empty (0 bytes)")
    try:
        image = Image.open(io.BytesIO(data))
        width, height = image.size
        if width * height > max_pixels:
            raise ImageError(f"the image is {width}x{height} pixels, over the limit of {max_pixels} (MAX_IMAGE_PIXELS)")
        orientation = image.getexif().get(_ORIENTATION_TAG, 1)
        factor = min(max(1, factor_for(width, height)), width, height) if factor_for else 1
        image = _shrunk_rgb(image, factor)
        if orientation in _UPRIGHT:
            image = image.transpose(_UPRIGHT[orientation])
        turned = orientation in (5, 6, 7, 8)
        return Decoded(image, (height, width) if turned else (width, height))
    except Image.DecompressionBombError as error:  # Pillow's own guard, at twice its limit, fires in open()
        raise ImageError(f"the image is over the limit of {max_pixels} (MAX_IMAGE_PIXELS): {error}") from None
    except UnidentifiedImageError:
        raise ImageError("the file is not an image Pillow can read") from None
    except (OSError, SyntaxError, ValueError, EOFError) as error:
        if isinstance(error, ImageError):
            raise
        raise ImageError(f"the image is broken: {error}") from None


def _shrunk_rgb(image: Image.Image, factor: int) -> Image.Image:
    done = 1
    if factor > 1 and image.format == "JPEG":
        width = image.width
        drafted = image.draft("RGB", (image.width // factor, image.height // factor))
        if drafted is not None:  # the decoder scales by 1/2, 1/4 or 1/8 while it decodes
            done = round(width / drafted[1][2])
    if image.mode != "RGB":
        image = image.convert("RGB")
    if factor // done > 1:
        image = image.reduce(factor // done)
    return image


def _keep_pillow_guard_at_least(max_pixels: int) -> None:
    """Pillow's decompression-bomb guard stays on; it is raised only when MAX_IMAGE_PIXELS
    allows more, so it never refuses or warns about an image our own limit accepts."""
    if Image.MAX_IMAGE_PIXELS is not None and Image.MAX_IMAGE_PIXELS < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


class ImageCache:
    """Downloaded files on disk, named by the URL's hash; oldest evicted past the size cap."""

    def __init__(self, directory: Path, max_bytes: int):
        self.directory = directory
        self.max_bytes = max_bytes
        directory.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._total = sum(size for _, _, size in self._entries())

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
        tmp = path.with_suffix(f".{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        with self._lock:
            self._total += len(data)
            if self._total > self.max_bytes:
                self._evict()

    def _entries(self) -> list[tuple[float, Path, int]]:
        """(mtime, path, size) of each finished file: another thread's temporary file is not
        ours to evict, and a file another process evicted meanwhile is skipped."""
        entries = []
        for path in self.directory.iterdir():
            if "." in path.name:  # a download still being written
                continue
            try:
                stat = path.stat()
            except FileNotFoundError:
                continue
            entries.append((stat.st_mtime, path, stat.st_size))
        return entries

    def _evict(self) -> None:
        entries = sorted(self._entries())
        self._total = sum(size for _, _, size in entries)
        for _, path, size in entries:
            if self._total <= 0.9 * self.max_bytes:
                break
            path.unlink(missing_ok=True)
            self._total -= size


def _non_public(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address when it is not a public one (loopback, private, link-local, ...), else None."""
    ip = ipaddress.ip_address(address.split("%")[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped:
        ip = ip.ipv4_mapped
    return None if ip.is_global else ip


def _guarded_session(
    trusted: Callable[[str, int], bool], may_authorise: Callable[[str, str, int, str], bool]
) -> requests.Session:
    """A session whose every connection is checked where the bytes go. Once connected, before a
    byte is sent: the peer must be a public address unless ``trusted(host, port)``. The check
    before the request resolved the name once; this one sees the address actually reached, so
    a name that resolves to a public address first and to a private one next (DNS rebinding)
    is refused. Then an Authorization header is written only where
    ``may_authorise(scheme, host, port, path)``: the connection's own host and the path on the
    request line, whatever any earlier parse said."""

    def check(connection: urllib3.connection.HTTPConnection, sock: socket.socket) -> socket.socket:
        if not trusted(connection.host.lower(), connection.port):
            peer = _non_public(sock.getpeername()[0])
            if peer is not None:
                sock.close()
                raise ImageError(f"refused: {connection.host} connected to the non-public address {peer}")
        return sock

    class Guard:
        scheme = "http"
        _path = ""

        def _new_conn(self):
            return check(self, super()._new_conn())

        def putrequest(self, method, url, *args, **kwargs):
            self._path = url.split("?", 1)[0]
            return super().putrequest(method, url, *args, **kwargs)

        def putheader(self, header, *values):
            if header.lower() == "authorization" and not may_authorise(self.scheme, self.host, self.port, self._path):
                where = printable(f"{self.host}:{self.port}{self._path}")
                raise ImageError(f"refused: the Label Studio token would have gone to {where}")
            return super().putheader(header, *values)

    class HTTPConnection(Guard, urllib3.connection.HTTPConnection):
        pass

    class HTTPSConnection(Guard, urllib3.connection.HTTPSConnection):
        scheme = "https"

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
        self.ls = parse_target(self.ls_url + "/") if self.ls_url else None
        self.allowed_hosts = {h.strip().lower() for h in settings.fetch_allow_hosts.split(",") if h.strip()}
        self.local_root = Path(settings.local_files_root).resolve() if settings.local_files_root else None
        self.session = _guarded_session(self._trusted, self._label_studio_file)
        _keep_pillow_guard_at_least(settings.max_image_pixels)

    def load(self, reference: object) -> Image.Image:
        return decode_image(self.read_bytes(reference), self.settings.max_image_pixels)

    def load_reduced(self, reference: object, factor_for: Callable[[int, int], int]) -> Decoded:
        """The image shrunk by ``factor_for(width, height)``, with its full size."""
        return decode_reduced(self.read_bytes(reference), self.settings.max_image_pixels, factor_for)

    def fetch_to_file(self, reference: object) -> tuple[Path, tuple[int, int]]:
        """(a local file holding the image (the cache for downloads), its displayed size),
        checked to decode."""
        reference = _text(reference)
        url = self._remote_url(reference)
        data = self._read_local(reference) if url is None else self._download(url)
        size = decode_image(data, self.settings.max_image_pixels).size
        if url is None:
            return self._local_path(reference), size
        path = self.cache.path(url)
        if not path.exists():  # evicted, or larger than the whole cache: keep it anyway
            self.cache.put(url, data, force=True)
        return path, size

    def read_bytes(self, reference: object) -> bytes:
        reference = _text(reference)
        url = self._remote_url(reference)
        return self._read_local(reference) if url is None else self._download(url)

    def _remote_url(self, reference: str) -> str | None:
        """The URL (as it will be requested) a reference downloads from; None for a local path."""
        if reference.startswith("/data/") or LABEL_STUDIO_FILE_PATH.fullmatch(reference.split("?", 1)[0]):
            if not self.ls_url:
                raise ImageError(f"{redact_url(reference)} is a Label Studio file; set LABEL_STUDIO_URL to fetch it")
            return parse_target(self.ls_url + reference).url
        try:
            scheme = urlsplit(reference).scheme
        except ValueError:
            scheme = "?"  # parse_target says what is wrong
        return None if scheme == "" else parse_target(reference).url

    def _local_path(self, reference: str) -> Path:
        if self.local_root is None:
            raise ImageError("local file paths are not allowed; set LOCAL_FILES_ROOT to a directory to allow them")
        path = Path(reference)
        path = (path if path.is_absolute() else self.local_root / path).resolve()
        if not path.is_relative_to(self.local_root):
            raise ImageError(f"{printable(reference)} is outside LOCAL_FILES_ROOT")
        return path

    def _read_local(self, reference: str) -> bytes:
        path = self._local_path(reference)
        if not path.is_file():
            raise ImageError(f"no such file: {printable(reference)}")
        if path.stat().st_size > self.settings.max_image_bytes:
            limit = self.settings.max_image_bytes
            raise ImageError(f"{printable(reference)} is over the size limit of {limit} bytes (MAX_IMAGE_BYTES)")
        return path.read_bytes()

    def _label_studio_file(self, scheme: str, host: str, port: int, path: str) -> bool:
        """Whether this is one of Label Studio's file paths on Label Studio's own origin: the
        only place its token may go."""
        if self.ls is None or (scheme, host.lower(), port) != self.ls.origin:
            return False
        if _ENCODED_SEPARATOR.search(path) or any(segment in (".", "..") for segment in path.split("/")):
            return False
        base = self.ls.path.rstrip("/")
        return path.startswith(base + "/") and LABEL_STUDIO_FILE_PATH.fullmatch(path[len(base) :]) is not None

    def _trusted(self, host: str, port: int) -> bool:
        """Label Studio's own host and the allow-list may be private addresses."""
        ls_host = self.ls is not None and (host, port) == (self.ls.host, self.ls.port)
        return ls_host or self._allowed(host, port)

    def _allowed(self, host: str, port: int) -> bool:
        return host in self.allowed_hosts or f"{host}:{port}" in self.allowed_hosts

    def _check_address(self, target: Target, label_studio_file: bool) -> None:
        if label_studio_file or self._allowed(target.host, target.port):
            return
        if self.ls is not None and target.origin == self.ls.origin:
            raise ImageError(
                f"refused: {redact_url(target.url)} is on Label Studio's host but not one of its file paths "
                "(/data/upload/, /data/local-files/, /tasks/<id>/resolve/, /projects/<id>/resolve/)"
            )
        try:
            infos = socket.getaddrinfo(target.host, target.port, proto=socket.IPPROTO_TCP)
        except (socket.gaierror, UnicodeError) as error:
            raise ImageError(f"cannot resolve host {target.host}: {error}") from None
        for info in infos:
            address = _non_public(info[4][0])
            if address is not None:
                raise ImageError(f"refused: {target.host} resolves to the non-public address {address}")

    def _download(self, url: str) -> bytes:
        cached = self.cache.get(url)
        if cached is not None:
            return cached
        data = self._fetch(parse_target(url))
        self.cache.put(url, data)
        return data

    def _fetch(self, target: Target) -> bytes:
        timeout = self.settings.fetch_timeout
        deadline = time.monotonic() + 3 * timeout
        first, previous = target, None
        for _hop in range(MAX_REDIRECTS + 1):
            ls_file = self._label_studio_file(target.scheme, target.host, target.port, target.path)
            self._check_address(target, ls_file)
            # The token never follows a redirect onto another origin, even onto Label Studio's.
            token = ls_file and self.label_studio_auth is not None and previous in (None, target.origin)
            headers = self.label_studio_auth() if token else {}
            try:
                response = self.session.get(
                    target.url, headers=headers, timeout=timeout, stream=True, allow_redirects=False
                )
            except requests.RequestException as error:
                if isinstance(error.__context__, ImageError):  # the connection's own check refused it
                    raise error.__context__ from None
                raise ImageError(f"cannot download {redact_url(target.url)}: {type(error).__name__}") from None
            with response:
                if response.is_redirect:
                    previous, target = target.origin, self._redirect(target, response.headers.get("location", ""))
                    continue
                if response.status_code != 200:
                    raise ImageError(f"downloading {redact_url(target.url)} answered HTTP {response.status_code}")
                return self._read_body(response, target.url, deadline)
        raise ImageError(f"too many redirects from {redact_url(first.url)}")

    def _redirect(self, target: Target, location: str) -> Target:
        """Where a redirect points, parsed and checked like the first URL."""
        try:
            return parse_target(urljoin(target.url, location))
        except ImageError as error:
            raise ImageError(f"refused: a redirect from {redact_url(target.url)}: {error}") from None

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


def _text(reference: object) -> str:
    if not isinstance(reference, str) or not reference.strip():
        raise ImageError("the task's image field is empty or not a string")
    return reference.strip()
