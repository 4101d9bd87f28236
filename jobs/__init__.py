"""What a user runs: train, evaluate, score, bench as plain functions; the job store, worker, schedules; the CLI."""
