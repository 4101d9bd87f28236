"""`python -m realfake.jobs.cli ...` is the `realfake` command (torchrun and job runners start it so)."""
from realfake.jobs.cli import main

main()
