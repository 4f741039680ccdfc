"""The tiny random LLaVA captions real images; every broken input degrades to a recorded text-only caption."""
from __future__ import annotations

import io

import pytest
from PIL import Image

from models.llm.captioner import CaptionConfig, ItemInput, Captioner
from models.images import ImageLimits

pytestmark = pytest.mark.slow


def encoded(image: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("images")
    photo = Image.radial_gradient("L").convert("RGB").resize((96, 64))
    files = {
        "png": encoded(photo, "PNG"),
        "jpeg": encoded(photo, "JPEG"),
        "cmyk_jpeg": encoded(photo.convert("CMYK"), "JPEG"),
        "png_alpha": encoded(photo.convert("RGBA"), "PNG"),
        "gif": encoded(photo.convert("P"), "GIF"),
        "huge": encoded(Image.new("1", (10_000, 10_000)), "PNG"),  # 100 Mpx, a few kB on disk
        "truncated": encoded(photo, "PNG")[:200],
        "not_image": b"%PDF-1.4 this is not an image",
    }
    paths = {}
    for name, raw in files.items():
        paths[name] = d / f"{name}.bin"
        paths[name].write_bytes(raw)
    return paths


def files(paths: dict) -> ImageLimits:
    """The image files are allowed, read from the folder they were written to."""
    return ImageLimits(sources=frozenset({"file"}), root=str(next(iter(paths.values())).parent))


def test_tiny_llava_captions_every_image_or_records_why_not(tiny_llava, image_files):
    summarizer = Captioner(tiny_llava, CaptionConfig(max_new_tokens=8, batch_size=4, limits=files(image_files)))
    items = [ItemInput(name, f"Item {name}", ["Test"], None, str(path)) for name, path in image_files.items()]
    captions = dict(zip(image_files, summarizer.caption(items)))
    for name in ("png", "jpeg", "cmyk_jpeg", "png_alpha", "gif"):
        assert captions[name].source == "image" and captions[name].text, (name, captions[name])
        assert captions[name].image_error is None
    assert "pixel limit" in captions["huge"].image_error
    assert captions["truncated"].image_error and captions["not_image"].image_error
    for name in ("huge", "truncated", "not_image"):
        assert captions[name].source == "text" and captions[name].text


def test_vision_model_without_image_and_text_model_with_one(tiny_llava, smollm2, image_files):
    no_image = Captioner(tiny_llava, CaptionConfig(max_new_tokens=6)).caption([ItemInput("1", "Plain")])[0]
    assert no_image.source == "text" and no_image.text
    text_model = Captioner(smollm2, CaptionConfig(max_new_tokens=24, limits=files(image_files)))
    caption = text_model.caption([ItemInput("2", "Toy Story (1995)", ["Animation", "Comedy"], None,
                                            str(image_files["png"]))])[0]
    assert caption.source == "text" and "reads no images" in caption.image_error
    assert len(caption.text.split()) >= 3


def test_captions_are_deterministic_and_batching_keeps_order(tiny_llava, image_files):
    summarizer = Captioner(tiny_llava, CaptionConfig(max_new_tokens=6, batch_size=2, limits=files(image_files)))
    items = [ItemInput(str(i), f"Item {i}", None, None, str(image_files["png" if i % 2 else "jpeg"]))
             for i in range(5)]
    one_by_one = [summarizer.caption([item])[0].text for item in items]
    assert [c.text for c in summarizer.caption(items)] == one_by_one
