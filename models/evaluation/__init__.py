"""The offline protocols: the paper protocol (``paper``), the prequential replay of the candidate stage,
the baselines, ranking metrics and the summary-quality measures."""
