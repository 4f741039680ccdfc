import base64
import http.server
import io
import threading

import pytest
from PIL import Image

from models.images import ImageError, ImageLimits, load_image


def png_bytes(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


def test_exif_orientation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    path = tmp_path / "rotated.jpg"
    image.save(path, "JPEG", exif=exif.tobytes())
    assert load_image(str(path)).size == (20, 40)


def test_modes_become_rgb_and_alpha_is_composited_on_white(tmp_path):
    transparent = Image.new("RGBA", (8, 8), (0, 0, 0, 0))
    (tmp_path / "a.png").write_bytes(png_bytes(transparent))
    loaded = load_image(str(tmp_path / "a.png"))
    assert loaded.mode == "RGB" and loaded.getpixel((0, 0)) == (255, 255, 255)
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))
    (tmp_path / "c.jpg").write_bytes(png_bytes(cmyk, "JPEG"))
    assert load_image(str(tmp_path / "c.jpg")).mode == "RGB"
    palette = Image.new("P", (8, 8))
    (tmp_path / "p.gif").write_bytes(png_bytes(palette, "GIF"))
    assert load_image(str(tmp_path / "p.gif")).mode == "RGB"


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
        assert load_image(f"{url}/ok.png").size == (12, 6)
        with pytest.raises(ImageError, match="over 100 bytes"):
            load_image(f"{url}/ok.png", ImageLimits(max_bytes=100))
        with pytest.raises(ImageError, match="fetch failed"):
            load_image(f"{url}/missing.png")
    finally:
        server.shutdown()
    with pytest.raises(ImageError, match="cannot read"):
        load_image("/nonexistent/image.png")
