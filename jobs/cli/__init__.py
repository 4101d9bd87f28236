"""`realfake` command line. Subcommands load on first use so that `realfake --help` or `jobs list`
does not pay for importing torch."""
from __future__ import annotations

import importlib
import logging

import click

# name -> "module:attribute" of a click command or group under realfake.jobs.cli
SUBCOMMANDS = {
    "data": "data:data",
    "train": "train:train",
    "evaluate": "evaluate:evaluate",
    "evaluate-scores": "evaluate:evaluate_scores",
    "runs": "runs:runs",
    "demo": "demo:demo",
    "engine": "engine:engine",
    "score": "score:score",
    "report": "report:report",
    "explain": "explain:explain",
    "submit": "service:submit",
    "jobs": "service:jobs",
    "worker": "service:worker",
    "schedule": "service:schedule",
    "bench": "bench:bench",
    "pretrain": "pretrain:pretrain",
    "sweep": "sweep:sweep",
}


class LazyGroup(click.Group):
    """click's documented lazy-loading pattern: import a subcommand's module only when it runs."""

    def __init__(self, *args, lazy_subcommands: dict[str, str], **kwargs):
        super().__init__(*args, **kwargs)
        self.lazy_subcommands = lazy_subcommands

    def list_commands(self, ctx):
        return sorted(set(super().list_commands(ctx)) | set(self.lazy_subcommands))

    def get_command(self, ctx, cmd_name):
        if cmd_name in self.lazy_subcommands:
            module_name, attr = self.lazy_subcommands[cmd_name].split(":")
            module = importlib.import_module(f"realfake.jobs.cli.{module_name}")
            return getattr(module, attr)
        return super().get_command(ctx, cmd_name)

    def invoke(self, ctx):
        # Bad input (missing folder, unknown model, bad spec...) is raised as ValueError or OSError
        # with a message that names the problem and the fix: show that one line, not a traceback.
        # --verbose keeps the traceback for debugging.
        try:
            return super().invoke(ctx)
        except (ValueError, OSError) as exc:
            if ctx.params.get("verbose"):
                raise
            click.echo(f"error: {exc}", err=True)
            ctx.exit(2)


@click.group(cls=LazyGroup, lazy_subcommands=SUBCOMMANDS, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log debug messages.")
@click.version_option(package_name="realfake")
def main(verbose: bool) -> None:
    """realfake: tell real face photos from expertly retouched fakes.

    Typical flow: `data prepare` -> `train` -> `evaluate` -> `engine build` -> `score`.
    `demo` runs all of them on a small synthetic set.
    """
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        datefmt="%H:%M:%S",
    )


if __name__ == "__main__":
    main()
