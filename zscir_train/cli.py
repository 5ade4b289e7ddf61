"""`zscir-train`: the shapes world and the training commands. Each group in `zscir_train.commands`
registers its own commands."""

import os

import typer

from zscir_train.commands import train, world

# The environment every zscir-train command runs in unless it sets these itself, applied before a command
# imports torch (OpenMP reads it once, when torch loads it). PASSIVE: OpenMP's threads sleep at a barrier
# instead of spinning ~300,000 iterations first; on cores shared with other busy processes the spinning
# took the time of the very thread it waited for (LinCIR on the world, 2 cores busy: 2-3x the samples/s
# with PASSIVE, for 0-12% idle; benchmarks/README.md, "Under background load").
THREAD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}


def thread_env() -> None:
    for name, value in THREAD_ENV.items():
        os.environ.setdefault(name, value)


app = typer.Typer(help="Train zero-shot composed image retrieval models (LinCIR, Pic2Word, TAT) and build the shapes world.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False, callback=thread_env)
world.register(app)
train.register(app)


if __name__ == "__main__":
    app()
