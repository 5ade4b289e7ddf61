"""One composed query the way the papers' code runs it: open_clip + phi in PyTorch, then a torch matmul
and top-k over the gallery features. The cold-start benchmark times this program from process start.

    python -m zscir_bench.torch_query REF.jpg "as a sketch" --bundle B --gallery G [--checkpoint phi.safetensors]
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(add_completion=False, pretty_exceptions_show_locals=False)


@app.command()
def torch_query(
    reference: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="The reference image.")],
    text: Annotated[str, typer.Argument(help="The modification text.")],
    bundle: Annotated[Path, typer.Option(exists=True, file_okay=False, help="Bundle whose model to rebuild.")],
    gallery: Annotated[Path, typer.Option(exists=True, file_okay=False, help="A zscir gallery (its features).")],
    checkpoint: Annotated[Path | None, typer.Option(help="phi checkpoint (default: random phi, same speed).")] = None,
    weights: Annotated[str | None, typer.Option(help="Backbone weights file or open_clip tag.")] = None,
    k: Annotated[int, typer.Option("-k", min=1)] = 10,
    threads: Annotated[int | None, typer.Option(min=1)] = None,
) -> None:
    """Print the top-k gallery paths for REFERENCE changed as TEXT says."""
    import numpy as np
    import torch

    from zscir_bench.reference_model import reference_for_bundle
    from zscir_infer.gallery import Gallery

    if threads:
        torch.set_num_threads(threads)
    ref, _ = reference_for_bundle(bundle, checkpoint, weights)
    method = "phi" if ref.query_encoder is not None else "slerp"
    xq = torch.from_numpy(ref.encode_queries([(reference, text)], method=method))  # [1, D]
    with Gallery.open(gallery) as g:
        xb = torch.from_numpy(np.array(g.features()))  # [N, D]
        scores, ids = torch.topk(xq @ xb.T, min(k, len(xb)), dim=1)
        items = g.items(ids[0].tolist())
        for rank, (score, i) in enumerate(zip(scores[0].tolist(), ids[0].tolist(), strict=True), 1):
            typer.echo(f"{rank:3d}  {score:.4f}  {items[i].path}")


if __name__ == "__main__":
    app()
