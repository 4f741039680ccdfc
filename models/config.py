"""Configs the CLI offers as options (LoRA, SASRec, the protocol and its presets), kept free of torch so
that importing the CLI stays fast."""
from __future__ import annotations

from dataclasses import dataclass, field

from models.llm.pipeline import TEXT

LANGUAGE_LINEAR = "language-linear"


@dataclass(frozen=True)
class LoraSettings:
    r: int = field(default=16, metadata={"help": "LoRA rank"})
    alpha: int = field(default=32, metadata={"help": "LoRA scaling numerator (scale = alpha / r)"})
    dropout: float = field(default=0.1, metadata={"help": "dropout on the LoRA input"})
    target_modules: str = field(default=LANGUAGE_LINEAR, metadata={
        "help": "'language-linear' (every linear layer of the language model; vision tower, projector and "
                "output head excluded), or comma-separated module names, or a regex"})


@dataclass(frozen=True)
class SASRecConfig:
    hidden: int = field(default=64, metadata={"help": "embedding and attention width"})
    blocks: int = field(default=2, metadata={"help": "self-attention blocks"})
    heads: int = field(default=1, metadata={"help": "attention heads"})
    dropout: float = field(default=0.2, metadata={"help": "dropout rate"})
    max_len: int = field(default=50, metadata={"help": "most recent items read"})
    loss: str = field(default="bce", metadata={
        "help": "'bce': the original paper's binary cross-entropy with one sampled negative per position; "
                "'ce': softmax cross-entropy over the whole catalog at every position (as RecBole's SASRec); "
                "'sampled': softmax cross-entropy over the next item and --negatives items drawn uniformly, "
                "shared by the batch (cheaper than 'ce' on a large catalog)"})
    negatives: int = field(default=256, metadata={"help": "uniform negatives per batch for loss 'sampled'"})
    whole_sequences: bool = field(default=False, metadata={
        "help": "train on every item of a long history, cut into windows of max_len+1 (False: only the last window)"})
    epochs: int = field(default=200, metadata={"help": "training epochs"})
    batch_size: int = field(default=128, metadata={"help": "sequences per step"})
    lr: float = field(default=1e-3, metadata={"help": "Adam learning rate"})
    seed: int = field(default=0, metadata={"help": "initialisation, batches and negatives"})
    device: str = field(default="cpu", metadata={"help": "torch device ('auto': CUDA when present)"})

    def __post_init__(self):
        if self.loss not in ("ce", "bce", "sampled"):
            raise ValueError(f"SASRec loss must be 'ce', 'bce' or 'sampled', not {self.loss!r}")
        if self.loss == "sampled" and self.negatives < 1:
            raise ValueError("SASRec loss 'sampled' needs at least one negative")


@dataclass(frozen=True)
class SequentialSourceConfig(SASRecConfig):
    """SASRec as the stream's sequential candidate source (``mmsr train-retrieval``, ``eval-stream``).

    It ranks the whole catalog, so it is trained for that: softmax cross-entropy over every item
    at every position, on every window of each history. On ML-100K's last 10% (prequential,
    history excluded) this took SASRec alone from HR@10 0.094 (the paper's objective, last
    window only, 200 epochs) to 0.194 in half the epochs. ``mmsr eval`` keeps the paper's
    objective (``SASRecConfig``), under which its tables were measured."""

    loss: str = field(default="ce", metadata={"help": SASRecConfig.__dataclass_fields__["loss"].metadata["help"]})
    whole_sequences: bool = field(default=True, metadata={
        "help": SASRecConfig.__dataclass_fields__["whole_sequences"].metadata["help"]})
    epochs: int = field(default=100, metadata={"help": "training epochs"})


@dataclass(frozen=True)
class EaseConfig:
    l2: float = field(default=100.0, metadata={
        "help": "EASE's ridge penalty on the item-item weights (chosen on ML-100K's validation window; "
                "100 and 300 within 0.0001 HR@10 of each other there)"})
    max_items: int = field(default=10000, metadata={
        "help": "EASE is fitted on at most this many items, the most interacted (its weights are dense: "
                "10,000 items take 400 MB, and fitting inverts a matrix that size); 0: no EASE"})


KS = (3, 5, 10)
TEXT_VARIANTS = ("mllm-msr", "tallrec-style", "direct-summary", "no-captions")
# collaborative tokens on top of a text variant's LoRA (CoLLM's stage 1), and the fused score
COLLAB_VARIANTS = ("collab", "tallrec-collab", "fused")
STAGE_ONE = {"collab": "mllm-msr", "tallrec-collab": "tallrec-style"}
LLM_VARIANTS = TEXT_VARIANTS + COLLAB_VARIANTS


@dataclass(frozen=True)
class EvalConfig:
    model: str = field(default="smollm2-135m-instruct", metadata={"help": "LLM for captions and scoring (the LoRA base)"})
    summary_model: str = field(default="", metadata={
        "help": "LLM for the recurrent summaries, as MMSR_SUMMARY_MODEL is in the stream ('': the same as model)"})
    users: int = field(default=16, metadata={"help": "users evaluated (a seeded sample; 0: every eligible user)"})
    window: int = field(default=9, metadata={"help": "most recent history items summarized"})
    block: int = field(default=TEXT.block_size, metadata={"help": "items per recurrent block (B)"})
    next_items: int = field(default=1, metadata={
        "help": "training positives per summary S_t: the first n items of block t+1, each with one negative"})
    seeds: tuple[int, ...] = field(default=(0, 1), metadata={"help": "seeds of the test negatives"})
    negatives: int = field(default=20, metadata={"help": "sampled negatives per test positive"})
    recent_titles: int = field(default=10, metadata={"help": "titles in the TALLRec-style prompt"})
    caption_tokens: int = field(default=24, metadata={"help": "generated tokens per item caption"})
    summary_tokens: int = field(default=64, metadata={"help": "generated tokens per summary"})
    generation_batch: int = field(default=32, metadata={"help": "prompts per generation call"})
    epochs: int = field(default=2, metadata={"help": "LoRA training epochs"})
    train_batch: int = field(default=8, metadata={"help": "examples per forward in training"})
    grad_accum: int = field(default=1, metadata={"help": "forwards per optimizer step"})
    lr: float = field(default=5e-4, metadata={"help": "LoRA learning rate"})
    sasrec_epochs: int = field(default=200, metadata={"help": "SASRec training epochs"})
    hard_negatives: float = field(default=0.5, metadata={
        "help": "share of training negatives drawn from the candidate stage's top N (co-occurrence); the rest uniform"})
    hard_pool: int = field(default=50, metadata={"help": "N: the candidate-stage list hard negatives come from"})
    projector_epochs: int = field(default=2, metadata={"help": "collaborative variants: projector stage epochs"})
    projector_lr: float = field(default=1e-3, metadata={"help": "collaborative variants: projector stage learning rate"})
    joint_epochs: int = field(default=0, metadata={"help": "collaborative variants: joint stage epochs (0: none)"})
    validation_negatives: int = field(default=20, metadata={"help": "negatives per validation positive (fused score)"})
    fused_llm: str = field(default="collab", metadata={"help": "the variant whose LLM margin the fused score reads"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the 95% intervals"})
    variants: tuple[str, ...] = field(default=LLM_VARIANTS, metadata={"help": "LoRA-trained models to run"})
    zero_shot: bool = field(default=True, metadata={"help": "also score with the base model, no adapter"})
    seed: int = field(default=0, metadata={"help": "user sample, training negatives and training order"})
    device: str = field(default="auto", metadata={"help": "torch device"})


PRESETS = {
    # the documented CPU default: 16 users, 2 negative seeds, every variant. The four text variants took
    # 40.9 min on a 2-core machine (cold caches; bench/results/eval_ml100k_default); the collaborative
    # variants add a second SASRec, two projector stages and the fused fit (five variants: 86 min with
    # the machine shared, bench/results/eval_ml100k_collab), so all seven take well over an hour
    "default": EvalConfig(),
    # for a GPU machine: 256 users, three pairs per summary (3,072 training examples per model), three
    # seeds; measured on an H200 in bf16 (bench/results/eval_ml100k_gpu): baselines, zero-shot and two
    # LoRA variants in 8 min; a further variant (training and scoring) in about 1.6 min
    "gpu": EvalConfig(users=256, next_items=3, seeds=(0, 1, 2), caption_tokens=32, generation_batch=256,
                      train_batch=32),
    # what the tests run: a tiny random LLaVA as the LLM, a handful of users
    "smoke": EvalConfig(model="tiny-random-llava", users=6, window=6, seeds=(0, 1), caption_tokens=4,
                        summary_tokens=6, epochs=1, train_batch=4, sasrec_epochs=3, bootstrap=50),
}


@dataclass(frozen=True)
class LeaveOneOutOptions:
    """``mmsr eval --protocol leave-one-out``: the SASRec trials and what is tried on the validation items."""

    stream_sasrec: bool = field(default=True, metadata={
        "help": "train SASRec as the stream serves it (the sequential source's settings) as one trial"})
    long_max_len: str = field(default="200", metadata={
        "help": "max_len of the SASRec trials tuned for long histories, comma-separated ('': none)"})
    long_loss: str = field(default="sampled", metadata={"help": "their objective ('ce', 'sampled' or 'bce')"})
    negatives: int = field(default=256, metadata={"help": "uniform negatives per batch for the 'sampled' objective"})
    max_epochs: int = field(default=100, metadata={"help": "most epochs of each SASRec trial (early stopping)"})
    check_every: int = field(default=2, metadata={"help": "epochs between validation checks"})
    patience: int = field(default=3, metadata={"help": "checks without a better validation NDCG@10 before stopping"})
    ease_l2: str = field(default="100,300,1000,3000", metadata={"help": "EASE ridge penalties tried, comma-separated"})
    rrf_k: str = field(default="10,30,60", metadata={"help": "RRF constants tried for the blend, comma-separated"})
    bootstrap: int = field(default=1000, metadata={"help": "bootstrap resamples for the test intervals"})
