"""One style for zscir's five command-line tools: errors, exit codes, consoles and the shared options.

    app = typer.Typer(...)

    @command(app, "query")
    def query(bundle: BundleDir = DEFAULT_BUNDLE, backend: Backend = "ort", ...): ...

`command` registers a function as a typer command that prints a `ZscirError` as one line
(`Error: ...`) and exits with EXIT_USER_ERROR, a KeyboardInterrupt as a note and EXIT_INTERRUPTED;
typer (click) itself exits with EXIT_USAGE for a usage error. Any other exception is a bug and keeps
its traceback. Commands only parse, validate, call the library and print.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from zscir_infer.errors import UsageError, ZscirError

EXIT_USER_ERROR = 1  # bad input: a file, a value, a state the user can fix
EXIT_USAGE = 2  # options that do not go together (click's own code for usage errors)
EXIT_INTERRUPTED = 130  # Ctrl-C, as shells report SIGINT
ERROR_PREFIX = "[red]Error:[/red] "

DEFAULT_BUNDLE = Path("zscir-out/bundle")
DEFAULT_GALLERY = Path("zscir-out/gallery")

console = Console(highlight=False, soft_wrap=True)  # soft wrap: long paths stay on one line in pipes
err_console = Console(stderr=True, highlight=False, soft_wrap=True)

# Options that recur across the tools: one name and one help text each.
BundleDir = Annotated[Path, typer.Option("--bundle", "-b", envvar="ZSCIR_BUNDLE", help="The bundle directory.")]
GalleryDir = Annotated[Path, typer.Option("--gallery", "-g", envvar="ZSCIR_GALLERY", help="The gallery directory.")]
Backend = Annotated[str, typer.Option("--backend", help="ort (ONNX Runtime), trt (native TensorRT engines) or openvino (OpenVINO, CPU).")]
Device = Annotated[str, typer.Option(
    "--device", help="Where to run: cpu, cuda[:N], or tensorrt[:N] (ONNX Runtime's TensorRT EP); "
    "for PyTorch, any torch device (cpu, cuda, cuda:1).")]
Precision = Annotated[str, typer.Option("--precision", help="Graph variant: fp32, fp16 or int8 (as exported).")]
BatchSize = Annotated[int, typer.Option("--batch-size", min=1, help="Images or texts per encoder call.")]
Threads = Annotated[int | None, typer.Option("--threads", min=1, help="CPU threads per graph (default: all cores).")]
Profile = Annotated[list[str] | None, typer.Option(
    "--profile", help="Batch profile NAME:MIN,OPT,MAX, repeatable (default latency:1,1,8 and "
    "throughput:1,32,128).", show_default=False)]
JsonOutput = Annotated[bool, typer.Option("--json", help="Print the result as JSON on stdout.")]


def fail(message: str, code: int = EXIT_USER_ERROR) -> None:
    """Print one error line naming what was wrong, and exit."""
    err_console.print(ERROR_PREFIX + escape(message))
    raise typer.Exit(code)


def user_errors(func: Callable) -> Callable:
    """Wrap a command: ZscirError -> one error line and exit 1 (2 for a UsageError); Ctrl-C -> exit 130."""

    @functools.wraps(func)
    def wrapper(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except UsageError as exc:
            fail(str(exc), EXIT_USAGE)
        except ZscirError as exc:
            fail(str(exc))
        except KeyboardInterrupt:
            err_console.print("[yellow]Interrupted.[/yellow] Run the same command again to resume where it can.")
            raise typer.Exit(EXIT_INTERRUPTED) from None

    return wrapper


def command(app: typer.Typer, name: str | None = None, **kwargs) -> Callable[[Callable], Callable]:
    """`app.command(name)` with zscir's error handling (see `user_errors`)."""

    def register(func: Callable) -> Callable:
        app.command(name, **kwargs)(user_errors(func))
        return func

    return register
