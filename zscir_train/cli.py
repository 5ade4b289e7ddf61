"""`zscir-train`: the shapes world and the training commands. Each group in `zscir_train.commands`
registers its own commands."""

import typer

from zscir_train.commands import train, world

app = typer.Typer(help="Train zero-shot composed image retrieval models (LinCIR, Pic2Word, TAT) and build the shapes world.",
                  no_args_is_help=True, pretty_exceptions_show_locals=False)
world.register(app)
train.register(app)


if __name__ == "__main__":
    app()
