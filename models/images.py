"""Item images from a data URI, an https (or http) URL or a file, made safe for a vision processor.

The ``image`` field is written by whoever produces catalog events, so it is untrusted: a path or
URL in it must never read the worker's files or reach its network unless a setting allows that
source. ``ImageLimits.sources`` is the allow-list (``MMSR_IMAGE_SOURCES``, default ``https,data``):

- files are read only under ``ImageLimits.root``, only when they are regular files (a FIFO or a
  device such as ``/dev/zero`` never blocks the captioner), with the byte cap enforced while
  reading (``st_size`` is 0 for ``/dev/zero``, so it is never trusted);
- a URL's host is resolved once, every address it resolves to must be public (no loopback,
  private, link-local, shared or reserved range) unless ``private_networks`` allows them, and the
  connection goes to that checked address (no second lookup a DNS rebinding could answer);
  redirects are followed at most ``max_redirects`` times, each hop checked the same way; the body
  is read against the byte cap and a total deadline whatever Content-Length says.

Every failure is an ``ImageError`` with a reason the item keeps (served at ``GET /items/{id}``),
so a bad image degrades to a text-only caption instead of crashing the worker. Reasons never
repeat the path or URL, and a refused file is refused before anything is looked up on disk, so
they tell a producer nothing about the host.
"""
from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import stat
import time
import urllib.parse
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

SOURCES = ("https", "http", "data", "file")


class ImageError(ValueError):
    """Why an image could not be used."""


@dataclass(frozen=True)
class ImageLimits:
    timeout_seconds: float = field(default=10.0, metadata={"help": "longest http(s) fetch, redirects included"})
    max_bytes: int = field(default=20_000_000, metadata={"help": "encoded size, for every source"})
    max_pixels: int = field(default=40_000_000, metadata={
        "help": "decoded width x height: guards against decompression bombs"})
    sources: frozenset[str] = field(default=frozenset({"https", "data"}), metadata={
        "help": f"the kinds of reference an event may name, of {SOURCES}"})
    root: str = field(default="", metadata={"help": "with 'file' in sources: the only folder files are read from"})
    private_networks: bool = field(default=False, metadata={
        "help": "let URLs reach loopback, private and link-local addresses (an intranet image server)"})
    max_redirects: int = field(default=3, metadata={"help": "http(s) redirects followed, each hop checked"})

    def __post_init__(self):
        unknown = set(self.sources) - set(SOURCES)
        if unknown:
            raise ValueError(f"unknown image sources {sorted(unknown)}; choose from {list(SOURCES)}")
        if "file" in self.sources and not self.root:
            raise ValueError("the 'file' image source needs a root folder (MMSR_IMAGE_ROOT)")


URL_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*):")


def read_bytes(ref: str, limits: ImageLimits) -> bytes:
    scheme = (URL_SCHEME.match(ref) or [None, ""])[1].lower()
    if scheme not in ("", "data", "http", "https", "file") and "://" in ref:
        raise ImageError(f"{scheme} image references are not supported")
    kind = scheme if scheme in ("data", "http", "https") else "file"
    if kind not in limits.sources:
        raise ImageError(f"{kind} image references are not allowed (MMSR_IMAGE_SOURCES)")
    if kind == "data":
        return read_data_uri(ref, limits)
    if kind == "file":
        return read_file(ref[len("file://"):] if ref.startswith("file://") else ref, limits)
    return fetch(ref, limits)


def read_data_uri(ref: str, limits: ImageLimits) -> bytes:
    header, _, payload = ref.partition(",")
    if ";base64" not in header:
        raise ImageError("data URI is not base64-encoded")
    if len(payload) * 3 // 4 > limits.max_bytes:
        raise ImageError(f"data URI over {limits.max_bytes} bytes")
    try:
        return base64.b64decode(payload, validate=True)
    except binascii.Error as exc:
        raise ImageError(f"data URI is not valid base64: {exc}") from None


def read_file(name: str, limits: ImageLimits) -> bytes:
    """A regular file under the root, symlinks resolved first (one that leads out is refused)."""
    root = os.path.realpath(limits.root)
    path = os.path.realpath(os.path.join(root, name))  # an absolute name replaces the root, then is checked
    if os.path.commonpath([root, path]) != root:
        raise ImageError("file is outside the image root")
    try:
        # O_NONBLOCK: opening a FIFO with no writer must not wait; O_NOFOLLOW: the name is already resolved
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except OSError as exc:
        raise ImageError(f"cannot read the file: {exc.strerror or type(exc).__name__}") from None
    with os.fdopen(fd, "rb", buffering=0) as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ImageError("not a regular file")
        return read_capped(handle.read, limits.max_bytes, deadline=None)


def read_capped(read, max_bytes: int, deadline: float | None) -> bytes:
    """Read until the end, failing past ``max_bytes`` or ``deadline``: no declared size is trusted."""
    chunks, total = [], 0
    while True:
        if deadline is not None and time.monotonic() > deadline:
            raise ImageError("fetch took too long")
        chunk = read(min(65536, max_bytes + 1 - total))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        total += len(chunk)
        if total > max_bytes:
            raise ImageError(f"image over {max_bytes} bytes")


def checked_address(host: str, port: int, limits: ImageLimits) -> str:
    """The address to connect to: the host's, resolved once, refused if any of them is not public."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as exc:
        raise ImageError(f"cannot resolve the image host: {exc}") from None
    addresses = [info[4][0] for info in infos]
    if not addresses:
        raise ImageError("cannot resolve the image host")
    if not limits.private_networks:
        for address in addresses:
            if not is_public(ipaddress.ip_address(address.split("%")[0])):
                raise ImageError("image host resolves to a loopback, private or reserved address "
                                 "(MMSR_IMAGE_PRIVATE_NETWORKS allows them)")
    return addresses[0]


def is_public(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Globally routed unicast: not loopback, private, link-local, shared (CGNAT) or reserved."""
    ip = getattr(ip, "ipv4_mapped", None) or ip  # ::ffff:127.0.0.1 is loopback too
    return ip.is_global and not ip.is_multicast


class PinnedHTTPConnection(http.client.HTTPConnection):
    """Connects to an address checked beforehand, whatever the host name resolves to now."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.address = address

    def connect(self):
        self.sock = socket.create_connection((self.address, self.port), self.timeout)


class PinnedHTTPSConnection(http.client.HTTPSConnection):
    """The same, with the certificate checked against the host name (SNI and verification)."""

    def __init__(self, host: str, port: int, address: str, timeout: float):
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.address = address

    def connect(self):
        self.sock = self.tls.wrap_socket(socket.create_connection((self.address, self.port), self.timeout),
                                         server_hostname=self.host)


def fetch(url: str, limits: ImageLimits) -> bytes:
    deadline = time.monotonic() + limits.timeout_seconds
    for _ in range(limits.max_redirects + 1):
        parts = urllib.parse.urlsplit(url)
        scheme = parts.scheme.lower()
        if scheme not in ("http", "https") or scheme not in limits.sources:
            raise ImageError(f"{scheme or 'a relative'} image references are not allowed (MMSR_IMAGE_SOURCES)")
        if not parts.hostname:
            raise ImageError("image URL has no host")
        try:
            port = parts.port or (443 if scheme == "https" else 80)
        except ValueError:
            raise ImageError("image URL has an invalid port") from None
        address = checked_address(parts.hostname, port, limits)
        connection_class = PinnedHTTPSConnection if scheme == "https" else PinnedHTTPConnection
        remaining = max(0.1, deadline - time.monotonic())
        connection = connection_class(parts.hostname, port, address, remaining)
        try:
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            connection.request("GET", path, headers={"Accept": "image/*", "User-Agent": "mmsr"})
            response = connection.getresponse()
            if response.status in (301, 302, 303, 307, 308):
                location = response.getheader("Location")
                if not location:
                    raise ImageError(f"redirect {response.status} without a Location")
                url = urllib.parse.urljoin(url, location)
                continue
            if response.status != 200:
                raise ImageError(f"fetch failed: HTTP {response.status}")
            return read_capped(response.read, limits.max_bytes, deadline)
        except (OSError, http.client.HTTPException) as exc:
            raise ImageError(f"fetch failed: {type(exc).__name__}") from None
        finally:
            connection.close()
    raise ImageError(f"more than {limits.max_redirects} redirects")


def load_image(ref: str, limits: ImageLimits = ImageLimits()) -> Image.Image:
    """An RGB image, EXIF-orientation applied, within the pixel limit; ImageError otherwise."""
    raw = read_bytes(ref, limits)
    try:
        with Image.open(io.BytesIO(raw)) as probe:
            width, height = probe.size  # header only: checked before any pixel is decoded
            if width * height > limits.max_pixels:
                raise ImageError(f"{width}x{height} exceeds the {limits.max_pixels}-pixel limit")
            probe.seek(0)  # first frame of an animation
            image = ImageOps.exif_transpose(probe)
            image.load()
    except ImageError:
        raise
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ImageError(f"not a readable image: {exc}") from None
    return to_rgb(image)


def to_rgb(image: Image.Image) -> Image.Image:
    """CMYK, palette, greyscale and alpha images to RGB; transparency composited on white."""
    if image.mode == "P" and "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA", "PA"):
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    return image.convert("RGB") if image.mode != "RGB" else image
