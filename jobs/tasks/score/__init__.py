"""`realfake score`: score image folders with an engine, resumably (see `scorer.py`)."""
from realfake.jobs.tasks.score.scorer import merge_outputs, run_score

__all__ = ["merge_outputs", "run_score"]
