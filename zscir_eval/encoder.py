"""`QueryEncoder`: what the harness asks of an encoder, stated once.

Two classes satisfy it: `zscir_infer.Runtime` on a bundle and `zscir_train.reference.TorchReference`
(the PyTorch reference, built by the caller and passed in, so this package never imports torch). Both
return L2-normalized float32 features and take PIL images.

The prompt style (LinCIR's or Pic2Word's templates) follows from the placeholder: `*` is Pic2Word's
pseudo-token, `$` LinCIR's and SEARLE's (DESIGN §1), so no encoder needs to say which phi it runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import numpy as np
from PIL import Image


@runtime_checkable
class QueryEncoder(Protocol):
    @property
    def embed_dim(self) -> int:
        """D, the width of every feature the encoder returns."""
        ...

    @property
    def placeholder(self) -> str | None:
        """The pseudo-token word its phi replaces (`$` or `*`); None without a phi (no method 'phi')."""
        ...

    def encode_images(self, images: Sequence[Image.Image]) -> np.ndarray:
        """Normalized image features [N, D]."""
        ...

    def encode_queries(
        self,
        queries: Sequence[tuple[Image.Image, str]],
        method: str = ...,
        template: str | None = None,
        alpha: float | None = None,
    ) -> np.ndarray:
        """Normalized composed-query features [Q, D] for (reference image, text) pairs.

        method: one of `zscir_infer.contract.METHODS`. template (phi only): the prompt with the
        placeholder written out and a `{caption}` field the encoder fills with each text; the other
        methods encode the text as given. alpha: slerp's text weight (None: the encoder's own).
        """
        ...
