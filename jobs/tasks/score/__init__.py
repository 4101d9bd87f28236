"""`realfake score`: score image folders with an engine, resumably.

run.py (the job function `run_score`), scorer.py (one machine: `score_here`, `Scorer`), cluster.py (a
Ray task per shard, merged), files.py (walk, shard, resume filter), concurrency.py (threads ahead,
engine slices, engine threads), merge.py (`realfake score merge`). The output files themselves are
`realfake.jobs.tasks.outputs`.
"""
from realfake.jobs.tasks.score.merge import merge_outputs
from realfake.jobs.tasks.score.run import run_score

__all__ = ["merge_outputs", "run_score"]
