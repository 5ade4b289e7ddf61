"""Options that recur across the `zscir-train` command groups: one name and one help text each.

The options every zscir tool shares (`--device`, `--batch-size` of an encoder call, ...) are in
`zscir_infer.cli_style`.
"""

from __future__ import annotations

from typing import Annotated

import typer

Model = Annotated[str | None, typer.Option(
    "--model", help="open_clip model name, zscir config (zscir-tiny, world-clip) or architecture JSON.")]
Pretrained = Annotated[str | None, typer.Option(
    "--pretrained", help="open_clip pretrained tag (openai, laion2b_s32b_b79k, ...) or weights file.")]
SlerpAlpha = Annotated[float, typer.Option("--alpha", min=0.0, max=1.0, help="Slerp text weight.")]
