"""The MLLM-MSR stages: captions, recurrent user summaries, the p(Yes) recommender, its training,
collaborative tokens and the fused score, the one prompt builder and the serving slot."""
