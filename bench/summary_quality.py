"""Summary quality on MovieLens-100K: what each summarizer and prompt tells about the user's next items.

Users' histories (distinct items, in time order, as the stream's blocks hold them) are cut into
the recurrent blocks the stream writes (B = 3). After block t the summary S_t is scored against
block t+1 (``models.evaluation.summary_quality``): degenerate rate, invented titles, genre grounding, and
HR@k / NDCG@k of the next block when the summary, embedded with all-MiniLM-L6-v2, ranks the whole
catalog (history excluded). Two no-LLM baselines are scored the same way on the same users: a
template of the history's top genres and decade, and the recent titles as text (TALLRec-style).

Users come from one seeded shuffle: the first half is the validation pool (every choice of model
and prompt is made there), the second half the test pool (the figures); the two never overlap.
Generated texts are cached by their inputs, so a rerun regenerates nothing and reports the
timings measured when they were generated.

    python -m bench.summary_quality --split validation --models smollm2-135m-instruct --variants all
    python -m bench.summary_quality --split test --users 100 --models qwen2.5-coder-0.5b-instruct
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from bench import write_result
from models.llm import pipeline, prompts
from models.evaluation import summary_quality as sq
from models.evaluation.ranking import bootstrap_interval

BLOCK = pipeline.TEXT.block_size
# the prompt variants tried, each one change from the default (models.llm.prompts.SummaryPrompt)
VARIANTS = {
    "default": prompts.SUMMARY_PROMPT,
    "numbered": replace(prompts.SUMMARY_PROMPT, layout="numbered"),
    "generic": replace(prompts.SUMMARY_PROMPT, cues="none"),
    "detailed": replace(prompts.SUMMARY_PROMPT, cues="detailed"),
    "paragraph": replace(prompts.SUMMARY_PROMPT, sentences=0),
    "one-sentence": replace(prompts.SUMMARY_PROMPT, sentences=1),
    "before": prompts.SummaryPrompt(layout="numbered", cues="none", sentences=0),  # the shape of the earlier prompt
}


@dataclass(frozen=True)
class Options:
    split: str = "validation"
    users: int = 48
    blocks: int = 4
    models: tuple[str, ...] = ("smollm2-135m-instruct",)
    variants: tuple[str, ...] = ("default",)
    captions: tuple[bool, ...] = (False,)
    caption_model: str = ""  # "" : each summarizer captions with itself
    caption_tokens: int = 48
    max_new_tokens: int = 80
    batch_size: int = 16  # as the worker batches (MMSR_SUMMARY_BATCH)
    k: int = 50
    bootstrap: int = 1000
    seed: int = 0
    dtype: str = "auto"
    cache: str = ".mmsr/summary_quality/cache.json"


def user_pools(sequences: dict[str, list[str]], need: int, seed: int) -> dict[str, list[str]]:
    """The seeded shuffle of eligible users, halved: validation first, test second (disjoint)."""
    eligible = sorted((u for u, s in sequences.items() if len(s) >= need), key=lambda u: (len(u), u))
    random.Random(seed).shuffle(eligible)
    half = len(eligible) // 2
    return {"validation": eligible[:half], "test": eligible[half:]}


@dataclass
class UserWindow:
    user_id: str
    items: list[str]  # the first (blocks + 1) * B distinct items

    def blocks(self) -> list[list[str]]:
        return [self.items[i:i + BLOCK] for i in range(0, len(self.items), BLOCK)]


def windows(sequences, users: list[str], blocks: int) -> list[UserWindow]:
    return [UserWindow(u, sequences[u][:(blocks + 1) * BLOCK]) for u in users]


class Scorer:
    """Every measure of one method's summaries: S_t (after block t) against block t+1."""

    def __init__(self, catalog: dict[str, dict], embedder, k: int):
        self.catalog, self.embedder, self.k = catalog, embedder, k
        self.item_ids = sorted(catalog)
        from models.embeddings import item_text

        self.vectors = embedder.embed([item_text(catalog[i]["title"], catalog[i]["categories"]) for i in self.item_ids])
        self.titles = TitleIndex.of(catalog)

    def user(self, window: UserWindow, summaries: list[str]) -> dict:
        blocks = window.blocks()
        vectors = self.embedder.embed(summaries)
        hr, ndcg, invented, degenerate, grounded, named = [], [], 0, 0, 0, 0
        for t, (summary, vector) in enumerate(zip(summaries, vectors), 1):
            seen = [i for b in blocks[:t] for i in b]
            hit = sq.rank_targets(vector, self.vectors, self.item_ids, seen, blocks[t], self.k)
            hr.append(hit.hr)
            ndcg.append(hit.ndcg)
            invented += bool(self.titles.matcher.invented(summary, seen))
            degenerate += sq.degenerate(summary) is not None
            g, n = sq.grounding(summary, {c for i in seen for c in self.catalog[i]["categories"]})
            grounded, named = grounded + g, named + n
        return {"hr": float(np.mean(hr)), "ndcg": float(np.mean(ndcg)), "summaries": len(summaries),
                "invented": invented, "degenerate": degenerate, "grounded": grounded, "named": named}


@dataclass
class TitleIndex:
    matcher: sq.TitleMatcher

    @classmethod
    def of(cls, catalog) -> "TitleIndex":
        return cls(sq.TitleMatcher({i: r["title"] for i, r in catalog.items()}))


def baseline_summaries(catalog, window: UserWindow, blocks: int) -> dict[str, list[str]]:
    records = [catalog[i] for i in window.items]
    return {"template profile": [sq.template_profile(records[:t * BLOCK]) for t in range(1, blocks + 1)],
            "recent titles": [sq.recent_titles_text(records[:t * BLOCK]) for t in range(1, blocks + 1)]}


def summarize(lm, options: Options, style: prompts.SummaryPrompt, histories: list[list[str]], cache) -> dict:
    """S_1..S_T for every user (recurrent, batched across users), cached with the timing measured."""
    from models.llm.user_summarizer import SummarizerConfig, UserSummarizer

    key = cache.key(lm.name, str(lm.dtype), "summaries", style.label, options.max_new_tokens, options.batch_size,
                    histories)
    if key not in cache.data:
        summarizer = UserSummarizer(lm, SummarizerConfig(block_size=BLOCK, max_new_tokens=options.max_new_tokens,
                                                         batch_size=options.batch_size, prompt=style))
        started = time.perf_counter()
        result = summarizer.recurrent(histories)
        seconds = time.perf_counter() - started
        tokens = sum(len(lm.tokenizer(sq.body(s), add_special_tokens=False)["input_ids"]) for u in result for s in u)
        cache.data[key] = json.dumps({"summaries": result, "seconds": seconds, "tokens": tokens})
        cache.save()
    return json.loads(cache.data[key])


def caption_items(lm, options: Options, item_ids: list[str], catalog, cache) -> dict[str, dict]:
    """Captions of the items (``models.llm.captioner``), each with the degenerate check's verdict."""
    from models.llm.captioner import CaptionConfig, Captioner, ItemInput

    captioner = Captioner(lm, CaptionConfig(max_new_tokens=options.caption_tokens, batch_size=options.batch_size))
    keys = {i: cache.key(lm.name, "caption", options.caption_tokens, catalog[i]) for i in item_ids}
    todo = [i for i in item_ids if keys[i] not in cache.data]
    for start in range(0, len(todo), 64):
        chunk = todo[start:start + 64]
        made = captioner.caption([ItemInput(i, catalog[i]["title"], catalog[i]["categories"]) for i in chunk])
        for i, caption in zip(chunk, made):
            cache.data[keys[i]] = json.dumps({"caption": caption.text, "caption_rejected": caption.rejected})
        cache.save()
    return {i: json.loads(cache.data[keys[i]]) for i in item_ids}


def interval(values: np.ndarray, samples: int) -> list[float]:
    return [round(v, 4) for v in bootstrap_interval(values, np.mean, samples)]


def row(name: str, per_user: list[dict], baselines: dict[str, list[dict]], samples: int, **extra) -> dict:
    hr = np.array([u["hr"] for u in per_user])
    ndcg = np.array([u["ndcg"] for u in per_user])
    total = sum(u["summaries"] for u in per_user)
    named = sum(u["named"] for u in per_user)
    out = {"name": name, **extra, "users": len(per_user), "summaries": total,
           "hr": round(float(hr.mean()), 4), "hr_ci": interval(hr, samples),
           "ndcg": round(float(ndcg.mean()), 4), "ndcg_ci": interval(ndcg, samples),
           "degenerate_rate": round(sum(u["degenerate"] for u in per_user) / total, 4),
           "invented_title_rate": round(sum(u["invented"] for u in per_user) / total, 4),
           "genre_grounding": round(sum(u["grounded"] for u in per_user) / named, 4) if named else None,
           "genres_named_per_summary": round(named / total, 3)}
    for base, rows in baselines.items():
        if base == name:
            continue
        diff_hr = hr - np.array([u["hr"] for u in rows])
        diff_ndcg = ndcg - np.array([u["ndcg"] for u in rows])
        out[f"vs {base}"] = {"hr_diff": round(float(diff_hr.mean()), 4), "hr_diff_ci": interval(diff_hr, samples),
                             "ndcg_diff": round(float(diff_ndcg.mean()), 4),
                             "ndcg_diff_ci": interval(diff_ndcg, samples)}
    return out


def paired(rows: dict[str, list[dict]], samples: int) -> list[dict]:
    """Each later summarizer row against each earlier one, paired by user (HR@k and NDCG@k)."""
    names = list(rows)
    out = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            entry = {"row": second, "minus": first}
            for metric in ("hr", "ndcg"):
                diff = np.array([b[metric] - a[metric] for a, b in zip(rows[first], rows[second])])
                entry[f"{metric}_diff"], entry[f"{metric}_diff_ci"] = round(float(diff.mean()), 4), interval(diff, samples)
            out.append(entry)
    return out


def commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def measure(options: Options, data=None, embedder=None, load=None, log=print, out: str | None = None) -> dict:
    """Every (model, prompt, captions) row and both baselines on one split's users; ``data`` (an
    ``evaluation.Dataset``), ``embedder`` and ``load`` default to MovieLens-100K, MiniLM and the registry."""
    from models import registry
    from models.evaluation.paper import Dataset, TextCache

    data = data or Dataset.movielens()
    if embedder is None:
        from models.embeddings import TextEmbedder

        embedder = TextEmbedder("minilm", device="cpu")
    # 'auto' loads as the worker loads a summarizer: bf16 where the CPU multiplies it natively
    load = load or (lambda name: registry.load(name, device="cpu", dtype=options.dtype, generates=True))
    pools = user_pools(data.sequences, (options.blocks + 1) * BLOCK, options.seed)
    users = pools[options.split][:options.users]
    cases = windows(data.sequences, users, options.blocks)
    catalog = {i: {"title": r["title"], "categories": list(r.get("categories") or [])} for i, r in data.items.items()}
    scorer = Scorer(catalog, embedder, options.k)
    cache = TextCache(Path(options.cache) if options.cache else None)

    base_rows: dict[str, list[dict]] = {}
    for case in cases:
        for name, texts in baseline_summaries(catalog, case, options.blocks).items():
            base_rows.setdefault(name, []).append(scorer.user(case, texts))
    result = {"benchmark": "summary quality (models.evaluation.summary_quality)", "dataset": "MovieLens-100K",
              "split": options.split, "users": len(users), "user_ids": users, "block": BLOCK,
              "blocks_per_user": options.blocks, "k": options.k, "options": {**options.__dict__},
              "machine": machine(), "commit": commit(), "command": " ".join(["python -m bench.summary_quality", *sys.argv[1:]]),
              "rows": [row(name, rows, base_rows, options.bootstrap, kind="baseline") for name, rows in base_rows.items()]}
    llm_rows: dict[str, list[dict]] = {}
    for model in options.models:
        lm = load(model)
        for captioned in options.captions:
            captions = {}
            if captioned:
                captioner = load(options.caption_model) if options.caption_model else lm
                items = sorted({i for c in cases for i in c.items})
                started = time.perf_counter()
                captions = caption_items(captioner, options, items, catalog, cache)
                log(f"captions by {captioner.name}: {len(items)} items ({time.perf_counter() - started:.0f}s, cached ones free); "
                    f"{sum(bool(c['caption_rejected']) for c in captions.values())} rejected as degenerate or empty")
            histories = [[pipeline.item_text({**catalog[i], **captions.get(i, {})}, i, captions=captioned)
                          for i in c.items[:options.blocks * BLOCK]] for c in cases]
            for variant in options.variants:
                style = VARIANTS[variant]
                made = summarize(lm, options, style, histories, cache)
                per_user = [scorer.user(c, s) for c, s in zip(cases, made["summaries"])]
                n = sum(map(len, made["summaries"]))
                name = f"{model} ({str(lm.dtype).removeprefix('torch.')}) / {variant}{' + captions' if captioned else ''}"
                llm_rows[name] = per_user
                result["rows"].append(row(
                    name, per_user, base_rows, options.bootstrap,
                    kind="llm", model=model, dtype=str(lm.dtype).removeprefix("torch."), prompt=variant, prompt_settings=style.__dict__, captions=captioned,
                    caption_model=(options.caption_model or model) if captioned else None,
                    seconds_per_summary=round(made["seconds"] / n, 3),
                    generated_tokens_per_s=round(made["tokens"] / made["seconds"], 1),
                    example=made["summaries"][0][:3]))
                log(json.dumps({k: v for k, v in result["rows"][-1].items() if k not in ("example", "prompt_settings")}))
                if out:
                    write_result(out, result, show=False)
        del lm
    result["paired"] = paired(llm_rows, options.bootstrap)
    if out:
        write_result(out, result, show=False)
    return result


def machine() -> dict:
    import torch

    return {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "python": platform.python_version(),
            "torch": torch.__version__}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--split", choices=("validation", "test"), default="validation")
    parser.add_argument("--users", type=int, default=Options.users)
    parser.add_argument("--blocks", type=int, default=Options.blocks, help="summaries per user (S_1..S_T)")
    parser.add_argument("--models", default=",".join(Options.models))
    parser.add_argument("--variants", default="default", help=f"comma-separated, or 'all': {', '.join(VARIANTS)}")
    parser.add_argument("--captions", choices=("off", "on", "both"), default="off")
    parser.add_argument("--caption-model", default="", help="captioner ('': each summarizer captions with itself)")
    parser.add_argument("--caption-tokens", type=int, default=Options.caption_tokens)
    parser.add_argument("--max-new-tokens", type=int, default=Options.max_new_tokens)
    parser.add_argument("--batch-size", type=int, default=Options.batch_size)
    parser.add_argument("--k", type=int, default=Options.k)
    parser.add_argument("--bootstrap", type=int, default=Options.bootstrap)
    parser.add_argument("--dtype", default=Options.dtype)
    parser.add_argument("--cache", default=Options.cache)
    parser.add_argument("--out", default="")
    args = parser.parse_args()
    variants = tuple(VARIANTS) if args.variants == "all" else tuple(v.strip() for v in args.variants.split(","))
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown:
        parser.error(f"unknown variants {unknown}; known: {', '.join(VARIANTS)}")
    options = Options(split=args.split, users=args.users, blocks=args.blocks,
                      models=tuple(m.strip() for m in args.models.split(",") if m.strip()), variants=variants,
                      captions={"off": (False,), "on": (True,), "both": (False, True)}[args.captions],
                      caption_model=args.caption_model, caption_tokens=args.caption_tokens,
                      max_new_tokens=args.max_new_tokens, batch_size=args.batch_size, k=args.k,
                      bootstrap=args.bootstrap, dtype=args.dtype, cache=args.cache)
    out = args.out or f"bench/results/summary_quality_{args.split}.json"
    result = measure(options, out=out)
    print(json.dumps([{k: v for k, v in r.items() if k not in ("example", "prompt_settings")} for r in result["rows"]],
                     indent=1))


if __name__ == "__main__":
    main()
