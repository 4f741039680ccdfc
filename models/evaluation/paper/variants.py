"""The LLM variants' prompts (MLLM-MSR, TALLRec-style, the ablations) and the fused score's rows."""
from __future__ import annotations

from pathlib import Path


from models.llm import pipeline
from models.config import LLM_VARIANTS, STAGE_ONE, EvalConfig

from models.evaluation.paper.data import UserCase
from models.evaluation.paper.texts import Texts

def candidate(texts: Texts, item_id: str, captions: bool):
    return pipeline.candidate(texts.record(item_id), item_id, captions)


def recent_titles(texts: Texts, items: list[str], n: int) -> list[str]:
    return [texts.data.items[i]["title"] for i in items[-n:]]


def variant_prompts(name: str, texts: Texts, cases: list[UserCase], summaries: dict) -> tuple[list, list, list]:
    """(training examples, test requests, validation requests: None for a user without one) of one
    text variant. Every example and request carries the history before its item, which the
    collaborative tokens read (text-only scorers ignore it)."""
    import dataclasses

    from models.llm.training import Example

    captions = name not in ("no-captions", "tallrec-style")  # TALLRec reads titles, as in its paper
    tallrec = name == "tallrec-style"
    examples, requests, validation = [], [], []
    for case in cases:
        def request(candidates, before=None, t=-1, case=case):
            """The shared part as of summary S_t, or of the titles before item ``before`` (TALLRec)."""
            history = case.history if before is None else case.before(before)
            if tallrec:
                made = pipeline.recent_titles_request(recent_titles(texts, history, texts.config.recent_titles),
                                                      candidates)
            else:
                made = pipeline.preference_request(summaries[case.user_id][t], candidates)
            return dataclasses.replace(made, history=tuple(history))

        for t, positive, negative in case.train_pairs:
            shared = request([], before=positive, t=t)
            examples += [Example(shared.user_part, candidate(texts, positive, captions), True, shared.history),
                         Example(shared.user_part, candidate(texts, negative, captions), False, shared.history)]
        requests.append(request([candidate(texts, i, captions) for i in case.candidates()]))
        if case.validation is not None:
            t, item, negatives = case.validation
            validation.append(request([candidate(texts, i, captions) for i in [item, *negatives]], before=item, t=t))
        else:
            validation.append(None)
    return examples, requests, validation


def planned_variants(config: EvalConfig) -> list[str]:
    """The variants to run, in order: those asked for, plus what they stand on (a collaborative
    variant's text variant, the fused score's LLM)."""
    asked = list(config.variants)
    if "fused" in asked and config.fused_llm not in asked:
        if config.fused_llm not in LLM_VARIANTS or config.fused_llm == "fused":
            raise ValueError(f"fused_llm must be one of the LLM variants, not {config.fused_llm!r}")
        asked.insert(asked.index("fused"), config.fused_llm)
    needed = set(asked) | {STAGE_ONE[v] for v in asked if v in STAGE_ONE}
    return [v for v in LLM_VARIANTS if v in needed]


def fusion_rows(stage, sequential, history: list[str], items: list[str], p_yes: list[float]) -> list[list[float]]:
    """The fused score's features (``models.llm.fusion.FEATURES``) of ``items`` for a user with ``history``."""
    import math

    from models.llm.fusion import llm_margin

    cooc = stage.cooccurrence_scores(history)
    seq = sequential.item_scores(history, items)
    return [[llm_margin(p), s, cooc.get(i, 0.0), math.log1p(stage.counts.get(i, 0))]
            for i, p, s in zip(items, p_yes, seq)]


def fit_fusion(recommender, sequential, stage, adapter: Path, validation: list, cases: list[UserCase],
               config: EvalConfig):
    """Fit the fused score on the validation requests (scored by ``recommender``; ``stage`` is
    ``candidate_stage``'s) and save it beside the adapter; the ``FusedScorer``."""
    from models.llm import fusion

    todo = [(c, r) for c, r in zip(cases, validation) if r is not None]
    p_yes = recommender.score([r for _, r in todo])
    x, y, groups = [], [], []
    for (case, request), probs in zip(todo, p_yes):
        items = [c.item_id for c in request.candidates]
        x += fusion_rows(stage, sequential, list(request.history), items, probs)
        y += [1.0] + [0.0] * (len(items) - 1)
        groups += [case.user_id] * len(items)
    scorer = fusion.fit(x, y, groups, bootstrap=min(config.bootstrap, 200), seed=config.seed,
                        info={"llm": config.fused_llm, "adapter_version": recommender.version,
                              "validation_users": len(todo)})
    scorer.save_pretrained(adapter)
    return scorer


def fused_test_scores(scorer, llm_scores: dict, sequential, stage, cases: list[UserCase]) -> dict:
    """The fused score of every test candidate, from the LLM variant's p(Yes) of it."""
    out = {}
    for case in cases:
        items = case.candidates()
        rows = fusion_rows(stage, sequential, case.history, items, [llm_scores[case.user_id][i] for i in items])
        out[case.user_id] = dict(zip(items, scorer.logits(rows).tolist()))
    return out
