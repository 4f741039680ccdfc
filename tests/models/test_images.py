"""Item images: decoding made safe, and the ``image`` reference confined to the sources a setting allows."""
import base64
import http.server
import io
import os
import threading

import pytest
from PIL import Image

from models.images import ImageError, ImageLimits, load_image


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def files_under(root, **kw) -> ImageLimits:
    return ImageLimits(sources=frozenset({"file", "data"}), root=str(root), **kw)


LOCAL_HTTP = ImageLimits(sources=frozenset({"http"}), private_networks=True)  # the test servers listen on 127.0.0.1


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, "JPEG", exif=exif.tobytes())
    assert load_image(str(path), files_under(tmp_path)).size == (20, 40)


def test_modes_become_rgb_and_alpha_is_composited_on_white(tmp_path):
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    (tmp_path / "a.png").write_bytes(png_bytes(transparent))
    loaded = load_image(str(tmp_path / "a.png"), files_under(tmp_path))
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    (tmp_path / "c.jpg").write_bytes(png_bytes(cmyk, "JPEG"))
    assert load_image(str(tmp_path / "c.jpg"), files_under(tmp_path)).mode == "RGB"
    palette = Image.new("P", (8, 8))
    (tmp_path / "p.gif").write_bytes(png_bytes(palette, "GIF"))
    assert load_image(str(tmp_path / "p.gif"), files_under(tmp_path)).mode == "RGB"


def test_data_uri_and_limits():
    raw = png_bytes(Image.new("RGB", (10, 10)))
    uri = "data:image/png;base64," + base64.b64encode(raw).decode()
    assert load_image(uri).size == (10, 10)
    with pytest.raises(ImageError, match="pixel limit"):
        load_image(uri, ImageLimits(max_pixels=99))
    with pytest.raises(ImageError, match="bytes"):
        load_image(uri, ImageLimits(max_bytes=10))
    with pytest.raises(ImageError, match="base64"):
        load_image("data:image/png;base64,@@@")


def test_http_fetch_with_size_limit_and_missing_file():
    body = png_bytes(Image.effect_noise((12, 6), 80).convert("RGB"))
    assert len(body) > 100

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path == "/missing.png":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert load_image(f"{url}/ok.png", LOCAL_HTTP).size == (12, 6)
        with pytest.raises(ImageError, match="over 100 bytes"):
            load_image(f"{url}/ok.png", ImageLimits(max_bytes=100, sources=LOCAL_HTTP.sources, private_networks=True))
        with pytest.raises(ImageError, match="fetch failed"):
            load_image(f"{url}/missing.png", LOCAL_HTTP)
    finally:
        server.shutdown()
    with pytest.raises(ImageError, match="not allowed"):
        load_image("/nonexistent/image.png")  # files are off by default


# -- the reference is untrusted: only the allowed sources, files only under the root ----------------------------

def refused(ref: str, limits: ImageLimits, reason: str) -> str:
    """The error for ``ref``, which must name the reason and never repeat the reference (served to producers)."""
    with pytest.raises(ImageError, match=reason) as caught:
        load_image(ref, limits)
    message = str(caught.value)
    assert ref not in message and "/" not in message.replace("https", "").replace("http", ""), message
    return message


def in_thread(fn, seconds: float = 10.0):
    """Run ``fn`` and fail, rather than hang the suite, if it blocks (a FIFO, /dev/zero, a slow server)."""
    outcome = {}

    def target():
        try:
            outcome["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed back to the test
            outcome["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    assert not thread.is_alive(), f"still blocked after {seconds} s"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def test_default_sources_are_https_and_data_only(tmp_path):
    (tmp_path / "ok.png").write_bytes(png_bytes(Image.new("RGB", (4, 4))))
    default = ImageLimits()
    assert default.sources == {"https", "data"}
    refused(str(tmp_path / "ok.png"), default, "file image references are not allowed")
    refused(f"file://{tmp_path}/ok.png", default, "file image references are not allowed")
    refused("http://127.0.0.1:9/x.png", default, "http image references are not allowed")
    refused("ftp://example.org/x.png", files_under(tmp_path), "not supported")
    with pytest.raises(ValueError, match="needs a root"):
        ImageLimits(sources=frozenset({"file"}))
    with pytest.raises(ValueError, match="unknown image sources"):
        ImageLimits(sources=frozenset({"gopher"}))


def test_files_only_regular_and_only_under_the_root(tmp_path):
    root, outside = tmp_path / "images", tmp_path / "outside"
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    png = png_bytes(Image.new("RGB", (6, 3)))
    (root / "sub" / "ok.png").write_bytes(png)
    (outside / "secret.png").write_bytes(png)
    limits = files_under(root)
    assert load_image("sub/ok.png", limits).size == (6, 3)  # relative to the root
    assert load_image(str(root / "sub" / "ok.png"), limits).size == (6, 3)  # or absolute, inside it
    (root / "inner-link.png").symlink_to(root / "sub" / "ok.png")
    assert load_image("inner-link.png", limits).size == (6, 3)  # a link that stays inside is fine

    refused("../outside/secret.png", limits, "outside the image root")
    refused("sub/../../outside/secret.png", limits, "outside the image root")
    refused(str(outside / "secret.png"), limits, "outside the image root")
    (root / "escape.png").symlink_to(outside / "secret.png")
    refused("escape.png", limits, "outside the image root")
    (root / "escape-dir").symlink_to(outside)
    refused("escape-dir/secret.png", limits, "outside the image root")
    refused("/dev/zero", limits, "outside the image root")
    refused("/etc/passwd", limits, "outside the image root")
    # outside the root, a name that exists and one that does not get the same answer
    assert refused("/nonexistent/x.png", limits, "outside") == refused(str(outside / "secret.png"), limits, "outside")


def test_a_fifo_or_a_device_never_blocks_and_no_declared_size_is_trusted(tmp_path):
    os.mkfifo(tmp_path / "pipe.png")  # no writer: a plain open() would wait forever
    in_thread(lambda: refused("pipe.png", files_under(tmp_path), "not a regular file"))
    # with /dev as the root, /dev/zero (st_size 0, endless) is still refused, and quickly
    in_thread(lambda: refused("/dev/zero", files_under("/dev"), "not a regular file"))
    big = tmp_path / "big.png"
    big.write_bytes(b"\x89PNG" + b"\0" * 5000)
    in_thread(lambda: refused("big.png", files_under(tmp_path, max_bytes=1000), "over 1000 bytes"))


class Server:
    """A local HTTP server whose handler is one function; it counts the requests it got."""

    def __init__(self, handle, host: str = "127.0.0.1"):
        self.requests = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests += 1
                handle(self)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer((host, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{host}:{self.server.server_port}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def serve_png(handler):
    body = png_bytes(Image.new("RGB", (5, 5)))
    handler.send_response(200)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def test_urls_never_reach_loopback_or_private_addresses_unless_allowed():
    server = Server(serve_png)
    try:
        public_http = ImageLimits(sources=frozenset({"http", "https"}))
        refused(f"{server.url}/a.png", public_http, "loopback, private or reserved")
        port = server.server.server_port
        for host in ("localhost", "[::1]", "[::ffff:127.0.0.1]", "10.0.0.1", "169.254.169.254", "192.168.1.1",
                     "0.0.0.0"):
            refused(f"http://{host}:{port}/a.png", public_http, "loopback, private or reserved")
        assert server.requests == 0
        assert load_image(f"{server.url}/a.png", LOCAL_HTTP).size == (5, 5)  # the setting opens them
        assert server.requests == 1
    finally:
        server.close()


def test_a_redirect_is_checked_like_the_first_address(monkeypatch):
    import models.images as images

    target = Server(serve_png, host="127.0.0.2")  # the "private" address the redirect points at

    def redirect(handler):
        handler.send_response(302)
        handler.send_header("Location", f"{target.url}/inside.png")
        handler.end_headers()

    front = Server(redirect)
    # 127.0.0.1 plays a public server here, and every other address stays private
    monkeypatch.setattr(images, "is_public", lambda ip: str(ip) == "127.0.0.1")
    limits = ImageLimits(sources=frozenset({"http"}))
    try:
        refused(f"{front.url}/a.png", limits, "loopback, private or reserved")
        assert front.requests == 1 and target.requests == 0  # the private address was never connected to
        monkeypatch.setattr(images, "is_public", lambda ip: True)
        assert load_image(f"{front.url}/a.png", limits).size == (5, 5)  # a redirect between public hosts works
        loop = Server(lambda h: (h.send_response(301), h.send_header("Location", "/again"), h.end_headers()))
        try:
            refused(f"{loop.url}/a.png", limits, "more than 3 redirects")
            assert loop.requests == 4
        finally:
            loop.close()
    finally:
        front.close()
        target.close()


def test_a_body_without_content_length_is_cut_at_the_cap():
    sent = {"bytes": 0}

    def endless(handler):  # HTTP/1.0, no Content-Length: the body ends when the server closes, here never
        handler.send_response(200)
        handler.end_headers()
        try:
            while sent["bytes"] < 50_000_000:
                handler.wfile.write(b"\0" * 65536)
                sent["bytes"] += 65536
        except OSError:
            pass

    server = Server(endless)
    try:
        limits = ImageLimits(sources=frozenset({"http"}), private_networks=True, max_bytes=100_000)
        in_thread(lambda: refused(f"{server.url}/big.png", limits, "over 100000 bytes"))
        assert sent["bytes"] < 50_000_000
    finally:
        server.close()
