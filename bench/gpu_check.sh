#!/usr/bin/env bash
# The GPU figures issue 14 still lacks, as one run on a lent card: tokens/s of eager decoding
# (dynamic cache) against the static cache with torch.compile, at real-size LLaVA-1.5-7B shapes with
# random bf16 weights, summaries first (batch 1, 16, 64), then captions as time allows.
#
# A lent machine gives a session about 15 minutes in all and 10 per command, so each step has its
# own time limit and bench/gpu_generation.py writes its JSON after every row: a step cut short keeps
# what it measured ("complete": false). Needs only torch, transformers and pillow (the card's image
# has them). Run from the repository root; results go to $OUT (the device tool's folder), else
# bench/results. GPU_CHECK_ARGS adds arguments to both steps ("--tiny --new-tokens 3": a CPU smoke run).
set -uo pipefail
export PYTHONUNBUFFERED=1
out="${OUT:-bench/results}"
mkdir -p "$out"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$out/gpu_card.csv"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
timeout "${SUMMARY_LIMIT_S:-330}" python3 -m bench.gpu_generation --models llava-1.5-7b --batches 1,16,64 \
    --tasks summary --out "$out/gpu_generation_summaries.json" ${GPU_CHECK_ARGS:-}
echo "summaries: exit $?"
timeout "${CAPTION_LIMIT_S:-200}" python3 -m bench.gpu_generation --models llava-1.5-7b --batches 1,16,64 \
    --tasks caption --out "$out/gpu_generation_captions.json" ${GPU_CHECK_ARGS:-}
echo "captions: exit $?"
