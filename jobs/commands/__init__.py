"""The click commands: thin wrappers that parse options and call the plain functions in `realfake.jobs`."""
