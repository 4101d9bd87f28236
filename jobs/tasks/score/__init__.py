"""`realfake score`: score image folders with an engine, resumably.

scorer.py (the run: `run_score`, `Scorer`), files.py (walk, shard, resume filter), concurrency.py
(threads ahead, engine slices, engine threads), writers.py (the output interface: lines.py for CSV and
JSONL, parquet.py for Parquet, outputs.py for what they share), merge.py (`realfake score merge`).
"""
from realfake.jobs.tasks.score.merge import merge_outputs
from realfake.jobs.tasks.score.scorer import run_score

__all__ = ["merge_outputs", "run_score"]
