"""LoRA fine-tuning on a tiny split: the loss falls, the adapter saves, reloads and scores the same."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np

import pytest
import torch
from PIL import Image

from models import registry
from models.llm import prompts
from models.llm.recommender import Recommender, full_inputs, yes_no_ids
from models.llm.requests import Candidate, ScoreRequest
from models.llm.serving import ADAPTER_METADATA, load_adapter
from models.config import LoraSettings
from models.llm.training import (Example, TrainConfig, answer_loss, attach_lora, collate, encode_example,
                             optimizer_steps, train)

pytestmark = pytest.mark.slow

LIKES = prompts.user_preferences("The user appears to have a preference for science fiction and space adventures.")
POSITIVES = [Candidate(f"p{i}", t, ["Sci-Fi"]) for i, t in
             enumerate(["Star Wars (1977)", "Alien (1979)", "Contact (1997)", "Dune (1984)"])]
NEGATIVES = [Candidate(f"n{i}", t, ["Romance"]) for i, t in
             enumerate(["Sleepless in Seattle (1993)", "Emma (1996)", "Sabrina (1995)", "Persuasion (1995)"])]
EXAMPLES = [Example(LIKES, c, True) for c in POSITIVES] + [Example(LIKES, c, False) for c in NEGATIVES]


def test_training_lowers_the_loss_and_the_reloaded_adapter_scores_the_same(tmp_path):
    lm = registry.load(registry.SMOLLM2, device="cpu")
    config = TrainConfig(epochs=6, batch_size=8, grad_accum=1, lr=5e-4, checkpoint_every=3)
    metadata = train(lm, EXAMPLES, tmp_path / "run", LoraSettings(), config, progress=False)
    curve = metadata["metrics"]["loss_curve"]
    assert len(curve) == 6
    assert sum(curve[-2:]) / 2 < sum(curve[:2]) / 2 * 0.7, curve
    saved = json.loads((tmp_path / "run" / "adapter" / ADAPTER_METADATA).read_text())
    assert saved["base_model"] == registry.SMOLLM2 and saved["lora"]["r"] == 16 and saved["git_revision"]
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    request = [ScoreRequest(LIKES, POSITIVES + NEGATIVES)]
    trained = Recommender(lm).score(request)[0]
    reloaded = load_adapter(registry.load(registry.SMOLLM2, device="cpu"), tmp_path / "run" / "adapter")
    again = reloaded.score(request)[0]
    assert max(abs(a - b) for a, b in zip(trained, again)) < 1e-5
    assert reloaded.version == saved["version"]
    base = Recommender(registry.load(registry.SMOLLM2, device="cpu")).score(request)[0]
    assert max(abs(a - b) for a, b in zip(trained, base)) > 1e-3  # the adapter is really applied
    # six steps on a 2-core CPU teach mostly the prior, but the seen positives already lead
    assert sum(trained[:4]) / 4 - sum(trained[4:]) / 4 > 0.02, trained


def reference_loss(lm, example: Example) -> float:
    """The causal-LM loss of prompt + answer with the labels masked to the answer token (no padding)."""
    yes, no = yes_no_ids(lm.tokenizer)
    prompt, extra = full_inputs(lm, example.user_part, example.candidate, 600)
    answer = torch.tensor([[yes if example.label else no]])
    ids = torch.cat([prompt, answer], dim=1)
    labels = torch.full_like(ids, -100)
    labels[0, -1] = ids[0, -1]
    with torch.no_grad():
        return float(lm.model(input_ids=ids, labels=labels, **extra).loss)


@pytest.mark.parametrize("model", ["smollm2", "tiny_llava"])
def test_answer_loss_on_a_padded_batch_equals_the_masked_causal_lm_loss(model, request):
    lm = request.getfixturevalue(model)
    rng = np.random.default_rng(0)
    examples = [Example(LIKES if i % 2 else prompts.user_recent_items(["Heat (1995)"] * (i + 1)),
                        dataclasses.replace(c, caption="A long caption. " * i,
                                            image=Image.fromarray(rng.integers(0, 255, (30 + i, 40, 3), dtype=np.uint8))
                                            if lm.is_vision and i % 3 else None), i % 2 == 0)
                for i, c in enumerate(POSITIVES + NEGATIVES)]
    answers = yes_no_ids(lm.tokenizer)
    batch = collate([encode_example(lm, answers, e, 600) for e in examples], lm.tokenizer.pad_token_id)
    assert len(set(batch["attention_mask"].sum(-1).tolist())) > 1  # rows of different lengths, left padded
    if lm.is_vision:
        assert batch["pixel_values"].shape[0] == sum(e.candidate.image is not None for e in examples) > 0
    with torch.no_grad():
        batched = float(answer_loss(lm.model, batch))
    expected = sum(reference_loss(lm, e) for e in examples) / len(examples)
    assert abs(batched - expected) < 1e-4, (batched, expected)


class Interrupted(Exception):
    pass


def test_an_interrupted_run_resumes_from_its_checkpoint(tmp_path):
    config = TrainConfig(epochs=2, batch_size=2, grad_accum=2, lr=1e-3, checkpoint_every=1)
    straight = train(registry.load(registry.SMOLLM2, device="cpu"), EXAMPLES, tmp_path / "a", LoraSettings(), config,
                     progress=False)

    def crash_after_two(step, loss):
        if step == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        train(registry.load(registry.SMOLLM2, device="cpu"), EXAMPLES, tmp_path / "b", LoraSettings(), config,
              progress=False, on_step=crash_after_two)
    assert (tmp_path / "b" / "checkpoints" / "step-2" / "trainer.json").is_file()
    assert not (tmp_path / "b" / "adapter").exists()
    steps_seen = []
    resumed = train(registry.load(registry.SMOLLM2, device="cpu"), EXAMPLES, tmp_path / "b", LoraSettings(), config,
                    progress=False, on_step=lambda step, loss: steps_seen.append(step))
    assert steps_seen == [3, 4] == [s + 1 for s in range(2, len(optimizer_steps(len(EXAMPLES), config)))]
    a, b = straight["metrics"]["loss_curve"], resumed["metrics"]["loss_curve"]
    assert len(a) == len(b) == 4 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    assert not (tmp_path / "b" / "checkpoints").exists()


class Planted:
    """What a hostile optimizer.pt would hold: unpickling it runs code (here, touches a file)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_resuming_never_unpickles_code_from_the_output_directory(tmp_path):
    import pickle

    from models.llm.training import load_optimizer_state

    checkpoint, marker = tmp_path / "step-1", tmp_path / "ran"
    checkpoint.mkdir()
    torch.save({"optimizer": {"state": {}}, "schedule": {}, "rng": torch.get_rng_state(), "x": Planted(marker)},
               checkpoint / "optimizer.pt")
    with pytest.raises(pickle.UnpicklingError):
        load_optimizer_state(checkpoint)
    assert not marker.exists()
    torch.save({"optimizer": {"state": {}}, "schedule": {"last_epoch": 3}, "rng": torch.get_rng_state()},
               checkpoint / "optimizer.pt")
    assert load_optimizer_state(checkpoint)["schedule"] == {"last_epoch": 3}  # what train() saves still loads


def test_lora_targets_the_language_model_only(tiny_llava):
    lm = registry.load(registry.TINY_LLAVA, device="cpu")
    model = attach_lora(lm, LoraSettings())
    adapted = {n.rsplit(".lora_A", 1)[0] for n, _ in model.named_parameters() if ".lora_A" in n}
    assert adapted and all("language_model" in n for n in adapted), sorted(adapted)[:5]
    assert not any("vision" in n or "projector" in n for n in adapted)
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)


# -- collaborative tokens: CoLLM's stages ------------------------------------------------------------
def collab_examples():
    """Candidates whose text is identical: only the collaborative tokens tell positives from negatives."""
    same = lambda item_id: Candidate(item_id, "A film (1995)", ["Drama"])  # noqa: E731
    return ([Example(LIKES, same(f"a{i}"), True, history=("a0", "a1")) for i in range(4)]
            + [Example(LIKES, same(f"b{i}"), False, history=("a0", "a1")) for i in range(4)])


@pytest.fixture(scope="module")
def sasrec():
    from models.config import SASRecConfig
    from models.candidates.sequential import SequentialRetriever

    groups = {"a": [f"a{i}" for i in range(4)], "b": [f"b{i}" for i in range(4)]}
    sequences = {f"{g}{n}": [items[(n + j) % 4] for j in range(4)] for g, items in groups.items() for n in range(12)}
    return SequentialRetriever.train(sequences, SASRecConfig(hidden=16, blocks=1, max_len=8, epochs=5, seed=0))


def test_the_projector_stage_learns_what_the_text_cannot_and_reloads_as_one_version(tmp_path, sasrec):
    from safetensors.torch import load_file

    from models.llm.collab import CollabTokens, Projector, VersionMismatch
    from models.candidates.sequential import SequentialRetriever

    examples = collab_examples()
    stage1 = train(registry.load(registry.SMOLLM2, device="cpu"), examples, tmp_path / "lora", LoraSettings(),
                   TrainConfig(epochs=2, batch_size=8, grad_accum=1, lr=5e-4, checkpoint_every=0), progress=False)
    lm = registry.load(registry.SMOLLM2, device="cpu")
    collab = CollabTokens(Projector.for_models(lm, sasrec), sasrec, lm.tokenizer)
    config = TrainConfig(epochs=20, batch_size=8, grad_accum=1, lr=2e-3, checkpoint_every=5, stage="projector")
    stage2 = train(lm, examples, tmp_path / "collab", LoraSettings(), config, progress=False, collab=collab,
                   init_adapter=tmp_path / "lora" / "adapter")
    curve = stage2["metrics"]["loss_curve"]
    assert curve[-1] < 0.5 * curve[0] and curve[-1] < 0.4, curve  # text alone sits at ln 2 here
    # stage 1 learns the answer prior from the text, but the text really cannot separate the two groups
    first1 = stage1["metrics"]["loss_curve"]
    assert first1[-1] < first1[0] and stage1["metrics"]["final_loss"] > 0.6, first1
    assert stage2["collab"]["sequential_version"] == sasrec.version
    # the stage-1 LoRA was frozen: the saved adapter weights are stage 1's
    before = load_file(tmp_path / "lora" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "collab" / "adapter" / "adapter_model.safetensors")
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    # adapter and projector load as one; the scores separate the groups and match the trained model
    request = [ScoreRequest(LIKES, [e.candidate for e in examples], history=("a0", "a1"))]
    served = load_adapter(registry.load(registry.SMOLLM2, device="cpu"), tmp_path / "collab" / "adapter",
                          sequential=sasrec)
    scores = served.score(request)[0]
    assert min(scores[:4]) > max(scores[4:]), scores
    assert served.collab.version == sasrec.version
    other = SequentialRetriever(sasrec.model, sasrec.vocabulary, {**sasrec.metadata, "version": "sasrec-new"})
    with pytest.raises(VersionMismatch):
        load_adapter(registry.load(registry.SMOLLM2, device="cpu"), tmp_path / "collab" / "adapter",
                     sequential=other)
    with pytest.raises(ValueError, match="no sequential model"):
        load_adapter(registry.load(registry.SMOLLM2, device="cpu"), tmp_path / "collab" / "adapter")


def test_the_joint_stage_resumes_from_its_checkpoint(tmp_path, sasrec):
    from safetensors.torch import load_file

    from models.llm.collab import CollabTokens, Projector, has_projector

    examples = collab_examples()
    train(registry.load(registry.SMOLLM2, device="cpu"), examples, tmp_path / "lora", LoraSettings(),
          TrainConfig(epochs=1, batch_size=8, checkpoint_every=0), progress=False)
    config = TrainConfig(epochs=2, batch_size=2, grad_accum=2, lr=1e-3, checkpoint_every=1, stage="joint")

    def run(out, on_step=None):
        lm = registry.load(registry.SMOLLM2, device="cpu")
        collab = CollabTokens(Projector.for_models(lm, sasrec, seed=3), sasrec, lm.tokenizer)
        return train(lm, examples, tmp_path / out, LoraSettings(), config, progress=False, on_step=on_step,
                     collab=collab, init_adapter=tmp_path / "lora" / "adapter")

    straight = run("a")

    def crash_after_two(step, loss):
        if step == 2:
            raise Interrupted

    with pytest.raises(Interrupted):
        run("b", crash_after_two)
    assert (tmp_path / "b" / "checkpoints" / "step-2" / "projector.safetensors").is_file()
    resumed = run("b")
    a, b = straight["metrics"]["loss_curve"], resumed["metrics"]["loss_curve"]
    assert len(a) == len(b) == 4 and max(abs(x - y) for x, y in zip(a, b)) < 1e-4, (a, b)
    # the joint stage trains the LoRA too, and saves it with the projector
    before = load_file(tmp_path / "lora" / "adapter" / "adapter_model.safetensors")
    after = load_file(tmp_path / "a" / "adapter" / "adapter_model.safetensors")
    assert any(not torch.equal(before[k], after[k]) for k in before) and has_projector(tmp_path / "a" / "adapter")
    with pytest.raises(ValueError, match="needs collaborative tokens"):
        train(registry.load(registry.SMOLLM2, device="cpu"), examples, tmp_path / "c", LoraSettings(), config,
              progress=False)
