"""The job functions: one plain function per kind of work, whose keyword arguments are its job spec
(see `realfake.jobs.service.spec`). The CLI and the job runner both call them."""
