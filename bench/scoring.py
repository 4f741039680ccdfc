"""Candidates scored per second on the CPU: shared-prefix batched scoring against the naive loop.

Same model (SmolLM2-135M fp32), same users, same 21 candidates per user, same token ids, in the
same process. Candidates are MovieLens titles with genres and a caption written by SmolLM2 itself
(``--caption-tokens``: 32 as in the GPU evaluation preset, 24 in the CPU one). The speed-up is bounded by
(prefix + candidate tokens) / (prefix / 21 + candidate tokens), so it is measured for two user
parts, with the token counts recorded:

- ``paragraph``: a preference paragraph of the summarizer's length cap (1,200 characters; the
  paper's summaries are paragraphs of this size, written by 7B+ models);
- ``smollm2``: SmolLM2-135M's own summaries of nine of the user's items, which are much shorter.

``collab_tokens`` repeats both with collaborative tokens (a SASRec-sized random item table and a
random projector: the cost, not the quality) and reports the rates against the text-only ones
of the same run.
"""
from __future__ import annotations

import argparse
import os
import platform
import random
import time

import torch

from models import registry
from models.llm import prompts
from models.data import movielens
from models.llm.recommender import Recommender, ScorerConfig, split_prompt
from models.llm.requests import Candidate, ScoreRequest
from bench import write_result

PARAGRAPH = (
    f"{prompts.SUMMARY_PREFIX} character-driven {{a}} and {{b}} films from the 1990s, with a clear taste for "
    "smart dialogue, ensemble casts and stories that balance humour with real emotional stakes. They return to "
    "well-reviewed, mainstream releases more than to obscure ones, and they often pick films by directors whose "
    "earlier work they liked. Over time their choices moved from light family entertainment towards darker, more "
    "adult stories: crime dramas with moral ambiguity, tense thrillers with a twist, and the occasional war film. "
    "They seem to avoid slapstick and horror with gore, but enjoy suspense that builds slowly. Visual style "
    "matters to them: they favour striking cinematography, period settings and memorable scores. They are open to "
    "foreign-language films when the story is strong, and they rate highly the films that many viewers rank "
    "among the best of their decade. Recent interactions suggest a growing interest in {{a}} titles."
)


def build_requests(lm, users: int, candidates: int, caption_tokens: int, seed: int = 0):
    """Two request sets over the same candidates: paragraph-length and SmolLM2-written user parts."""
    from models.llm.captioner import CaptionConfig, ItemInput, Captioner
    from models.llm.user_summarizer import SummarizerConfig, UserSummarizer

    rng = random.Random(seed)
    catalog = list(movielens.items())
    picks = [rng.sample(catalog, candidates) for _ in range(users)]
    histories = [rng.sample(catalog, 9) for _ in range(users)]
    flat = [item for pick in picks for item in pick]
    captioner = Captioner(lm, CaptionConfig(max_new_tokens=caption_tokens, batch_size=32))
    captions = captioner.caption([ItemInput(i["item_id"], i["title"], i["categories"]) for i in flat])
    cands = [Candidate(i["item_id"], i["title"], i["categories"], caption=c.text) for i, c in zip(flat, captions)]
    per_user = [cands[u * candidates:(u + 1) * candidates] for u in range(users)]
    summarizer = UserSummarizer(lm, SummarizerConfig(max_new_tokens=256, batch_size=users))
    written = summarizer.direct([[prompts.describe_item(i["title"], i["categories"]) for i in h] for h in histories])
    paragraph = [PARAGRAPH.format(a=h[0]["categories"][0].lower(), b=h[1]["categories"][0].lower())
                 for h in histories]
    ids = [tuple(i["item_id"] for i in h) for h in histories]
    return {"paragraph": [ScoreRequest(prompts.user_preferences(p), c, h) for p, c, h in zip(paragraph, per_user, ids)],
            "smollm2": [ScoreRequest(prompts.user_preferences(w), c, h) for w, c, h in zip(written, per_user, ids)]}


def random_collab(lm, item_ids, hidden: int = 64, seed: int = 0):
    """Collaborative tokens over an untrained SASRec of the served size and a fresh projector."""
    from models.candidates.sasrec import SASRec
    from models.llm.collab import CollabTokens, Projector
    from models.config import SASRecConfig
    from models.candidates.sequential import SequentialRetriever

    torch.manual_seed(seed)
    vocabulary = sorted(set(item_ids))
    sequential = SequentialRetriever(SASRec(len(vocabulary), SASRecConfig(hidden=hidden)), vocabulary,
                                     {"version": "random-for-benchmarks"})
    return CollabTokens(Projector.for_models(lm, sequential, seed=seed), sequential, lm.tokenizer)


def compare(recommender, requests, rounds: int) -> dict:
    """Shared and naive passes over all requests in alternation, ``rounds`` of each, so that both see
    the same machine (a shared VM's steal time moved single-pass ratios by 10%)."""
    recommender.score(requests[:1])  # warm-up, not timed
    t_shared = t_naive = 0.0
    for _ in range(rounds):
        start = time.perf_counter()
        shared = recommender.score(requests)
        t_shared += time.perf_counter() - start
        start = time.perf_counter()
        naive = recommender.score_naive(requests)
        t_naive += time.perf_counter() - start
    n = rounds * sum(len(r.candidates) for r in requests)
    return {
        **token_counts(recommender.lm, requests, recommender.config.caption_chars), "rounds": rounds,
        "shared_prefix_candidates_per_s": round(n / t_shared, 2),
        "naive_candidates_per_s": round(n / t_naive, 2),
        "speedup": round(t_naive / t_shared, 2),
        "max_abs_score_difference": max(abs(a - b) for ra, rb in zip(shared, naive) for a, b in zip(ra, rb)),
    }


def token_counts(lm, requests, caption_chars: int) -> dict:
    heads, tails = [], []
    for r in requests:
        for c in r.candidates:
            head, tail, _ = split_prompt(lm, r.user_part, c, caption_chars)
            heads.append(len(lm.tokenizer(head, add_special_tokens=False)["input_ids"]))
            tails.append(len(lm.tokenizer(tail, add_special_tokens=False)["input_ids"]))
    return {"prefix_tokens_mean": round(sum(heads) / len(heads), 1),
            "candidate_tokens_mean": round(sum(tails) / len(tails), 1)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default=registry.SMOLLM2)
    parser.add_argument("--users", type=int, default=6)
    parser.add_argument("--candidates", type=int, default=21)
    parser.add_argument("--caption-tokens", type=int, default=32)
    parser.add_argument("--users-per-batch", type=int, default=8)
    parser.add_argument("--rows-per-batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=2, help="alternating shared/naive passes, times summed")
    parser.add_argument("--note", default="", help="recorded with the figures (e.g. what else ran on the machine)")
    parser.add_argument("--out", default="bench/results/scoring.json")
    args = parser.parse_args()

    lm = registry.load(args.model, device="cpu", dtype="float32")
    config = ScorerConfig(users_per_batch=args.users_per_batch, rows_per_batch=args.rows_per_batch)
    recommender = Recommender(lm, config)
    sets = build_requests(lm, args.users, args.candidates, args.caption_tokens)
    result = {
        "benchmark": "p(Yes) scoring: shared-prefix KV cache batched across users vs one forward per candidate",
        "model": args.model, "device": "cpu", "dtype": "float32",
        "machine": {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "python": platform.python_version(), "torch": torch.__version__},
        "note": args.note, "users": args.users, "candidates_per_user": args.candidates,
        "caption_tokens": args.caption_tokens,
        "users_per_batch": args.users_per_batch, "rows_per_batch": args.rows_per_batch,
        "user_parts": {name: compare(recommender, requests, args.rounds) for name, requests in sets.items()},
    }
    items = [i for requests in sets.values() for r in requests for i in (*r.history, *(c.item_id for c in r.candidates))]
    with_tokens = Recommender(lm, config, collab=random_collab(lm, items))
    result["collab_tokens"] = {}
    for name, requests in sets.items():
        figures = compare(with_tokens, requests, args.rounds)
        text = result["user_parts"][name]
        figures["shared_rate_vs_text_only"] = round(figures["shared_prefix_candidates_per_s"]
                                                    / text["shared_prefix_candidates_per_s"], 3)
        figures["naive_rate_vs_text_only"] = round(figures["naive_candidates_per_s"] / text["naive_candidates_per_s"], 3)
        result["collab_tokens"][name] = figures
    write_result(args.out, result)


if __name__ == "__main__":
    main()
