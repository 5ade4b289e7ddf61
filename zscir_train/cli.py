"""`zscir-train`: the shapes world and the training commands. Each area registers its own commands."""

import typer

from zscir_train.training import cli as training_cli
from zscir_train.world import cli as world_cli

app = typer.Typer(help="Train zero-shot composed image retrieval models (LinCIR, Pic2Word, TAT) and build the shapes world.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
world_cli.register(app)
training_cli.register(app)


if __name__ == "__main__":
    app()
