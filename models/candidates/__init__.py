"""The candidate stage: co-occurrence, SASRec, EASE, content similarity and trending, and their blend.
Serving code: it never imports ``models.evaluation.paper``."""
