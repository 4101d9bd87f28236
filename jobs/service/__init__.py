"""The job service: specs checked against a job function's signature, the SQLite job store, the worker
and the runner child it starts per attempt, cron schedules.

Standard library only (plus croniter for cron expressions): listing, queueing and cancelling jobs never
imports torch. A job function is found by its "module:function" name when a job runs."""
