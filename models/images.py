"""Item images from a file path, an http(s) URL or a data URI, made safe for a vision processor.

Every failure is an ``ImageError`` with a reason the item keeps, so a bad image degrades to a
text-only caption instead of crashing the worker.
"""
from __future__ import annotations

import base64
import binascii
import io
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageOps, UnidentifiedImageError


class ImageError(ValueError):
    """Why an image could not be used."""


@dataclass(frozen=True)
class ImageLimits:
    timeout_seconds: float = 10.0  # http(s) fetch
    max_bytes: int = 20_000_000  # encoded size, for every source
    max_pixels: int = 40_000_000  # decoded width x height: guards against decompression bombs


def read_bytes(ref: str, limits: ImageLimits) -> bytes:
    if ref.startswith("data:"):
        header, _, payload = ref.partition(",")
        if ";base64" not in header:
            raise ImageError("data URI is not base64-encoded")
        if len(payload) * 3 // 4 > limits.max_bytes:
            raise ImageError(f"data URI over {limits.max_bytes} bytes")
        try:
            return base64.b64decode(payload, validate=True)
        except binascii.Error as exc:
            raise ImageError(f"data URI is not valid base64: {exc}") from None
    if ref.startswith(("http://", "https://")):
        try:
            with urllib.request.urlopen(ref, timeout=limits.timeout_seconds) as resp:
                body = resp.read(limits.max_bytes + 1)
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            raise ImageError(f"fetch failed: {exc}") from None
        if len(body) > limits.max_bytes:
            raise ImageError(f"image over {limits.max_bytes} bytes")
        return body
    path = Path(ref[len("file://"):] if ref.startswith("file://") else ref)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"cannot read {path}: {exc.strerror or exc}") from None
    if size > limits.max_bytes:
        raise ImageError(f"image over {limits.max_bytes} bytes")
    return path.read_bytes()


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
