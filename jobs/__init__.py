"""What a user runs, in three rooms: `tasks` (the job functions: train, evaluate, engine build, score,
sweep, pretrain, runs, demo), `service` (job specs, the SQLite store, the worker, schedules) and `cli`
(the click commands over both)."""
