"""`realfake score`: score image folders with an engine, resumably.

scorer.py (the run: `run_score`, `Scorer`), files.py (walk, shard, resume filter), concurrency.py
(threads ahead, engine slices, engine threads), merge.py (`realfake score merge`). The output files
themselves are `realfake.jobs.tasks.outputs`.
"""
from realfake.jobs.tasks.score.merge import merge_outputs
from realfake.jobs.tasks.score.scorer import run_score

__all__ = ["merge_outputs", "run_score"]
