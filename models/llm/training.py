"""Supervised LoRA fine-tuning of the recommender: answer "Yes" or "No" for (user, candidate).

The input is exactly what the scorer reads (shared prefix + candidate part); the loss is the
cross-entropy of the answer word ("Yes" or "No") at the last position, the logits the scorer turns
into p(Yes). That equals a causal-LM loss masked to the answer token of prompt + answer, without
the vocabulary-sized logits at every other position (~20% of a step's FLOPs on SmolLM2). Checkpoints
hold the adapter, the optimizer and the position in the (seeded) data order, so an interrupted
run resumes where it stopped. The result is a peft adapter saved with ``save_pretrained`` and
``mmsr-adapter.json`` (base model, data, settings, metrics, git revision).

With collaborative tokens training runs in CoLLM's stages, each its own resumable run:
``lora`` (LoRA on the text prompt), ``projector`` (the projector alone, the stage-1 LoRA loaded
frozen) and optionally ``joint`` (both, briefly). The projector and its config are saved inside
the adapter directory, so an adapter and its projector are published, swapped and versioned
as one.
"""
from __future__ import annotations

import json
import random
import re
import shutil
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from models.config import LANGUAGE_LINEAR, LoraSettings
from models.llm.pipeline import TEXT
from models.llm.recommender import full_inputs, token_inputs, yes_no_ids
from models.llm.requests import Candidate
from models.registry import LoadedModel
from models.llm.serving import ADAPTER_METADATA, publish_directory

_NOT_LANGUAGE = ("vision", "visual", "multi_modal_projector", "mm_projector", "lm_head", "embed")


@dataclass(frozen=True)
class TrainConfig:
    epochs: int = field(default=1, metadata={"help": "passes over the training examples"})
    batch_size: int = field(default=4, metadata={"help": "examples per forward"})
    grad_accum: int = field(default=4, metadata={"help": "forwards per optimizer step"})
    lr: float = field(default=3e-4, metadata={"help": "AdamW learning rate (linear decay after 5% warm-up)"})
    weight_decay: float = field(default=0.0, metadata={"help": "AdamW weight decay"})
    seed: int = field(default=0, metadata={"help": "data order and LoRA initialisation"})
    checkpoint_every: int = field(default=50, metadata={"help": "optimizer steps between checkpoints (0: none)"})
    max_steps: int = field(default=0, metadata={"help": "stop after this many optimizer steps (0: all epochs)"})
    caption_chars: int = field(default=TEXT.caption_chars, metadata={"help": "longest caption in a candidate's part"})
    stage: str = field(default="lora", metadata={
        "help": "'lora': LoRA on the prompt; with collaborative tokens 'projector' (projector only, the initial "
                "adapter frozen) or 'joint' (both)"})


STAGES = ("lora", "projector", "joint")


@dataclass(frozen=True)
class Example:
    """One supervised pair: the user's shared part, a candidate, and whether the user took it;
    ``history`` is what collaborative tokens read of the user."""

    user_part: str
    candidate: Candidate
    label: bool
    history: tuple[str, ...] = ()


def git_revision() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True,
                              cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def lora_targets(model: torch.nn.Module, spec: str) -> str | list[str]:
    """peft ``target_modules`` for a spec: the language model's linear layers by default."""
    if spec != LANGUAGE_LINEAR:
        return [s.strip() for s in spec.split(",")] if "," in spec or re.fullmatch(r"[\w.]+", spec) else spec
    leaves = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                     if isinstance(module, torch.nn.Linear) and not any(p in name for p in _NOT_LANGUAGE)})
    if not leaves:
        raise ValueError("no linear layers found in the language model")
    excluded = "|".join(_NOT_LANGUAGE)
    return rf"^(?!.*(?:{excluded})).*\.(?:{'|'.join(map(re.escape, leaves))})$"


def attach_lora(lm: LoadedModel, lora: LoraSettings, seed: int = 0) -> torch.nn.Module:
    """Wrap the model with a fresh adapter; everything else (vision tower included) is frozen."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    config = LoraConfig(r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, bias="none",
                        target_modules=lora_targets(lm.model, lora.target_modules), task_type="CAUSAL_LM")
    return get_peft_model(lm.model, config)


def encode_example(lm: LoadedModel, answers: tuple[int, int], example: Example, caption_chars: int,
                   collab=None) -> dict:
    """The scorer's token ids (and image inputs) for the pair, and the answer token to predict;
    with ``collab`` also the raw (user, candidate) vectors its placeholders take.

    ``answers`` is the tokenizer's (Yes, No) pair of first answer tokens.
    """
    yes, no = answers
    prompt, extra = full_inputs(lm, example.user_part, example.candidate, caption_chars, collab is not None)
    out = {"input_ids": prompt[0], "target": yes if example.label else no, "extra": extra}
    if collab is not None:
        out["collab"] = torch.cat([collab.user_inputs([example.history]), collab.item_inputs([example.candidate.item_id])])
    return out


def collate(encoded: list[dict], pad_id: int) -> dict:
    """Left padding with explicit positions, as the scorer does: every row ends at its answer position.

    The processor's image tensors are joined along their first axis, which runs over images.
    """
    width = max(len(e["input_ids"]) for e in encoded)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long, device=encoded[0]["input_ids"].device)
    mask = torch.zeros_like(ids)
    for row, e in enumerate(encoded):
        n = len(e["input_ids"])
        ids[row, width - n:], mask[row, width - n:] = e["input_ids"], 1
    batch = {"input_ids": ids, "attention_mask": mask, "position_ids": (mask.cumsum(-1) - 1).clamp(min=0)}
    for key in sorted({k for e in encoded for k in e["extra"]}):
        batch[key] = torch.cat([e["extra"][key] for e in encoded if key in e["extra"]])
    batch["targets"] = torch.tensor([e["target"] for e in encoded], device=ids.device)
    if "collab" in encoded[0]:  # row-major, as the placeholders: each row's user, then its candidate
        batch["collab"] = torch.cat([e["collab"] for e in encoded])
    return batch


def answer_loss(model, batch: dict, collab=None) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens, from the logits at each row's last position only."""
    inputs = {k: v for k, v in batch.items() if k not in ("targets", "collab", "input_ids")}
    inputs.update(token_inputs(model, collab, batch["input_ids"], batch.get("collab")))
    logits = model(**inputs, logits_to_keep=1).logits[:, -1]
    return torch.nn.functional.cross_entropy(logits.float(), batch["targets"])


def optimizer_steps(n: int, config: TrainConfig) -> list[list[list[int]]]:
    """The whole run, fixed by the seed: per optimizer step, its micro-batches of example indices.

    Steps never span two epochs; a resumed run skips the steps its checkpoint had done.
    """
    plan = []
    for epoch in range(config.epochs):
        order = list(range(n))
        random.Random(config.seed * 1_000_003 + epoch).shuffle(order)
        batches = [order[i:i + config.batch_size] for i in range(0, n, config.batch_size)]
        plan += [batches[i:i + config.grad_accum] for i in range(0, len(batches), config.grad_accum)]
    return plan[:config.max_steps] if config.max_steps else plan


def load_optimizer_state(checkpoint: Path) -> dict:
    """The optimizer, schedule and RNG state of a checkpoint. ``weights_only``: tensors and plain
    containers only, so a file dropped into the output directory cannot run code when a run resumes."""
    return torch.load(checkpoint / "optimizer.pt", weights_only=True)


def _latest_checkpoint(out_dir: Path) -> Path | None:
    found = sorted((p for p in (out_dir / "checkpoints").glob("step-*") if (p / "trainer.json").is_file()),
                   key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def trainable(lm: LoadedModel, lora: LoraSettings, config: TrainConfig, collab, init_adapter: Path | None):
    """The model to train for the stage, and the parameters the stage updates."""
    if config.stage not in STAGES:
        raise ValueError(f"unknown training stage {config.stage!r}; choose from {STAGES}")
    if config.stage != "lora" and (collab is None or init_adapter is None):
        raise ValueError(f"stage {config.stage!r} needs collaborative tokens and the stage-1 adapter to start from")
    if init_adapter is None:
        model = attach_lora(lm, lora, config.seed)
    else:
        from peft import PeftModel

        model = PeftModel.from_pretrained(lm.model, init_adapter, is_trainable=config.stage != "projector")
    params = [p for p in model.parameters() if p.requires_grad]
    if collab is not None:
        collab.projector.to(lm.device)
        for p in collab.projector.parameters():
            p.requires_grad_(config.stage != "lora")
        params += [p for p in collab.projector.parameters() if p.requires_grad]
    return model, params


def train(lm: LoadedModel, examples: list[Example], out_dir: Path, lora: LoraSettings = LoraSettings(),
          config: TrainConfig = TrainConfig(), data_info: dict | None = None, progress: bool = True,
          on_step=None, collab=None, init_adapter: Path | str | None = None) -> dict:
    """Fine-tune, checkpoint, save the adapter and its metadata; returns the metadata.

    ``on_step(step, loss)`` is called after each optimizer step (and after its checkpoint).
    ``collab`` (``models.llm.collab.CollabTokens``) puts collaborative tokens in every prompt; its
    projector is trained in the ``projector`` and ``joint`` stages and saved beside the adapter.
    ``init_adapter``: the adapter directory the stage starts from (stage 1's, for the later stages).
    """
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from tqdm.auto import tqdm

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model, params = trainable(lm, lora, config, collab, None if init_adapter is None else Path(init_adapter))
    answers = yes_no_ids(lm.tokenizer)
    encoded = [encode_example(lm, answers, e, config.caption_chars, collab) for e in examples]
    plan = optimizer_steps(len(examples), config)
    total = len(plan)
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    warmup = max(1, int(0.05 * total))
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))
    state = {"step": 0, "losses": [], "started": time.time()}
    resumed = _latest_checkpoint(out_dir)
    if resumed is not None:
        from safetensors.torch import load_file

        set_peft_model_state_dict(model, load_file(resumed / "adapter.safetensors"))
        if collab is not None:
            collab.projector.load_state_dict(load_file(resumed / "projector.safetensors"))
        saved = load_optimizer_state(resumed)
        optimizer.load_state_dict(saved["optimizer"])
        schedule.load_state_dict(saved["schedule"])
        torch.set_rng_state(saved["rng"])  # LoRA dropout continues as if never interrupted
        state = json.loads((resumed / "trainer.json").read_text())
    model.train()
    if collab is not None:
        collab.projector.train()
    bar = tqdm(total=total, initial=state["step"], desc="train", disable=not progress, unit="step")
    for batches in plan[state["step"]:]:
        losses = []
        for batch in batches:
            inputs = collate([encoded[i] for i in batch], lm.tokenizer.pad_token_id)
            loss = answer_loss(model, inputs, collab)
            (loss / len(batches)).backward()
            losses.append(float(loss.detach()))
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        state["step"] += 1
        state["losses"].append(sum(losses) / len(losses))
        bar.update(1)
        bar.set_postfix(loss=f"{state['losses'][-1]:.4f}")
        if config.checkpoint_every and state["step"] % config.checkpoint_every == 0 and state["step"] < total:
            _checkpoint(model, optimizer, schedule, state, out_dir, get_peft_model_state_dict, collab)
        if on_step is not None:
            on_step(state["step"], state["losses"][-1])
    bar.close()
    model.eval()
    if collab is not None:
        collab.projector.eval()
    metadata = {
        "base_model": lm.name, "base_path": lm.path, "version": f"{out_dir.name}-{int(time.time())}",
        "lora": asdict(lora), "train": asdict(config), "data": data_info or {"examples": len(examples)},
        "metrics": {"steps": state["step"], "first_loss": state["losses"][0] if state["losses"] else None,
                    "final_loss": state["losses"][-1] if state["losses"] else None,
                    "loss_curve": state["losses"], "seconds": round(time.time() - state["started"], 1)},
        "git_revision": git_revision(),
        "collab": None if collab is None else {"sequential_version": collab.version,
                                               "started_from": None if init_adapter is None else str(init_adapter)},
    }
    save_adapter(model, out_dir / "adapter", metadata, None if collab is None else collab.projector)
    shutil.rmtree(out_dir / "checkpoints", ignore_errors=True)
    return metadata


def _checkpoint(model, optimizer, schedule, state: dict, out_dir: Path, adapter_state, collab=None) -> None:
    """Written to a temporary directory and renamed, so a crash mid-write leaves the previous one."""
    from safetensors.torch import save_file

    target = out_dir / "checkpoints" / f"step-{state['step']}"
    tmp = target.with_name(target.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.detach().contiguous().cpu() for k, v in adapter_state(model).items()}, tmp / "adapter.safetensors")
    if collab is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in collab.projector.state_dict().items()},
                  tmp / "projector.safetensors")
    torch.save({"optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(), "rng": torch.get_rng_state()},
               tmp / "optimizer.pt")
    (tmp / "trainer.json").write_text(json.dumps(state))
    tmp.rename(target)


def save_adapter(model, out_dir: Path, metadata: dict, projector=None) -> Path:
    """``save_pretrained`` plus the metadata (and the projector), written beside the target and
    renamed into place, so a worker watching ``out_dir`` never loads a half-written adapter."""
    out_dir = Path(out_dir)
    def write(tmp: Path) -> None:
        model.save_pretrained(tmp)
        if projector is not None:
            projector.save_pretrained(tmp)
        (tmp / ADAPTER_METADATA).write_text(json.dumps(metadata, indent=2))

    return publish_directory(out_dir, write)
