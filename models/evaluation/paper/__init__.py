"""The MLLM-MSR protocol end to end: data, summaries, LoRA training, scoring, baselines, report.

Protocol (per selected user, items in time order): the last item is the test positive; the
history before it is cut to its most recent ``window`` items and summarized recurrently in
blocks of ``block`` items, giving summaries S_1..S_T. The test prompt uses S_T. Training pairs
come from the history only: S_t with the first item of block t+1 as the positive and one
sampled item the user never touched as the negative (1:1); ``next_items`` > 1 takes more of block
t+1's items as positives after S_t, each with its own negative (more pairs, no more summaries).
Test candidates: the positive and 20 sampled never-touched items per seed. Every model scores the same candidates.
Training negatives: a share (``hard_negatives``, default half) from the candidate stage's top N
(co-occurrence over everything before the validation items, the user's items excluded), the
rest uniform: the re-ranker sees the candidate stage's items in the stream.

Validation (the fused score): the last history item, with S_{T-1} (which has not read it) and
``validation_negatives`` negatives of the same two kinds. It is later in time than every
training positive and never one itself. The collaborative variants' SASRec ("sasrec-pre-validation",
also scored alone) and the co-occurrence and popularity features are trained on everything
before the validation items, so no feature has seen a validation positive.

Models in one run: random, popularity and SASRec (trained on every user's history, test items
excluded), the zero-shot base LLM, the full pipeline (LoRA on recurrent summaries with item
captions), a TALLRec-style model (same LM and LoRA, recent titles instead of a summary), and
the ablations "direct summary" (one summary of the same items, not recurrent) and "no item
captions" (summaries and candidates without captions). Then CoLLM's collaborative tokens on top
of the MLLM-MSR and TALLRec adapters ("collab", "tallrec-collab": stage 2 trains the projector
with the stage-1 LoRA frozen), and "fused": a logistic regression of one variant's LLM margin,
the SASRec score, the co-occurrence score and log popularity, fitted on the validation pairs.

Split the way peft splits a tuner: ``data`` (users, candidates), ``texts`` (captions and recurrent
summaries, cached), ``variants`` (each LLM variant's prompts, the fused score), ``run`` (the run
and ``mmsr train``'s adapter) and ``report`` (metrics, table, chart).
"""
from models.config import PRESETS, EvalConfig
from models.evaluation.paper.data import Dataset, UserCase, build_cases, candidate_stage, dataset_of
from models.evaluation.paper.report import ORDER, markdown_table
from models.evaluation.paper.run import run, train_adapter
from models.evaluation.paper.texts import TextCache, Texts
from models.evaluation.paper.variants import variant_prompts

__all__ = ["PRESETS", "EvalConfig", "Dataset", "UserCase", "build_cases", "candidate_stage", "dataset_of", "ORDER",
           "markdown_table", "run", "train_adapter", "TextCache", "Texts", "variant_prompts"]
