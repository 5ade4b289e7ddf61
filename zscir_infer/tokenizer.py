"""CLIP tokenization without torch: the bundle's tokenizer.json driven by Hugging Face `tokenizers`.

Ids equal open_clip's (`open_clip.get_tokenizer(...)`, clean="lower") for any text, because this module
cleans the text exactly as open_clip does (ftfy.fix_text, html.unescape twice, whitespace collapsed,
lowercase; the manifest records these steps) before the Rust tokenizer runs CLIP's regex, byte-level
map and BPE. Rows are <start_of_text> ids <end_of_text>, zero-padded to the context length; longer
texts are cut to context_length - 1 tokens and end with <end_of_text>, as open_clip does, and
`encode(..., return_truncated=True)` says which were cut.

The one case the tokenizer.json alone gets wrong is the literal text "<end_of_text>" (or
"<start_of_text>") right after punctuation: open_clip's regex then reads it as punctuation and words,
the file's added tokens as the special token. Texts holding a special token string are therefore
tokenized piece by piece here, following open_clip's regex.
"""

from __future__ import annotations

import html
import itertools
import os
from pathlib import Path

import ftfy
import numpy as np
from tokenizers import Tokenizer

from zscir_infer.errors import ZscirError

DEFAULT_CONTEXT_LENGTH = 77
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
PAD_ID = 0


class TokenizerError(ZscirError, ValueError):
    """The tokenizer file or a text cannot be used; the message says what to change."""


def clean(text: str) -> str:
    """open_clip's default text cleaning (`open_clip.tokenizer._clean_lower`)."""
    return " ".join(html.unescape(html.unescape(ftfy.fix_text(text))).split()).lower()


class ClipTokenizer:
    """texts -> token ids [B, context_length], identical to open_clip's tokenizer."""

    def __init__(self, tokenizer: Tokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH, source: str = ""):
        self.context_length = context_length
        self.source = source or "tokenizer"
        self.sot_id = self._special_id(tokenizer, SOT_TOKEN)
        self.eot_id = self._special_id(tokenizer, EOT_TOKEN)
        self._specials = {SOT_TOKEN: self.sot_id, EOT_TOKEN: self.eot_id}
        tokenizer.enable_truncation(max_length=context_length)
        tokenizer.enable_padding(length=context_length, pad_id=PAD_ID, pad_token=tokenizer.id_to_token(PAD_ID))
        self._tokenizer = tokenizer
        empty = tokenizer.encode("").ids[:2]
        if empty != [self.sot_id, self.eot_id]:
            raise TokenizerError(
                f"{self.source} does not frame texts as {SOT_TOKEN} ... {EOT_TOKEN} (the empty text gives "
                f"{empty}): it is not a zscir CLIP tokenizer; rebuild the bundle with zscir-export."
            )

    @classmethod
    def from_file(cls, path: str | os.PathLike, context_length: int = DEFAULT_CONTEXT_LENGTH) -> ClipTokenizer:
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"Tokenizer file {path} does not exist: the bundle is incomplete; re-export it.")
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as exc:  # tokenizers raises a bare Exception on malformed JSON
            raise TokenizerError(f"{path} is not a Hugging Face tokenizers JSON ({exc}); re-export the bundle.") from exc
        return cls(tokenizer, context_length, source=str(path))

    def _special_id(self, tokenizer: Tokenizer, token: str) -> int:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise TokenizerError(f"{self.source} has no {token} token: it is not a CLIP tokenizer.")
        return token_id

    def __call__(self, texts: list[str], dtype: type = np.int64) -> np.ndarray:
        return self.encode(texts, dtype=dtype)

    def encode(
        self, texts: list[str] | str, *, dtype: type = np.int64, return_truncated: bool = False
    ) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        """Token ids [B, context_length] (int64, or int32 for engines that want it).

        With return_truncated, also a bool array [B]: True where the text was longer than the context
        and was cut (its tail does not reach the encoder).
        """
        if isinstance(texts, str):
            texts = [texts]
        cleaned = [clean(t) for t in texts]
        encodings = self._tokenizer.encode_batch_fast(cleaned)
        flat = itertools.chain.from_iterable(e.ids for e in encodings)
        ids = np.fromiter(flat, dtype=dtype, count=len(texts) * self.context_length)
        ids = ids.reshape(len(texts), self.context_length)
        truncated = np.array([bool(e.overflowing) for e in encodings], dtype=bool)
        for i, text in enumerate(cleaned):
            if SOT_TOKEN in text or EOT_TOKEN in text:
                ids[i], truncated[i] = self._encode_with_specials(text)
        return (ids, truncated) if return_truncated else ids

    def _encode_with_specials(self, text: str) -> tuple[list[int], bool]:
        """One cleaned text that holds a special token string, framed, cut and padded like open_clip."""
        row = [self.sot_id, *self._content_ids(text), self.eot_id]
        truncated = len(row) > self.context_length
        if truncated:
            row = row[: self.context_length - 1] + [self.eot_id]
        return row + [PAD_ID] * (self.context_length - len(row)), truncated

    def _content_ids(self, text: str) -> list[int]:
        """A cleaned text through open_clip's regex and BPE piece by piece, special token strings included."""
        ids = []
        for piece, _ in self._tokenizer.pre_tokenizer.pre_tokenize_str(text):
            if piece in self._specials:
                ids.append(self._specials[piece])
            else:
                ids.extend(token.id for token in self._tokenizer.model.tokenize(piece))
        return ids

    def token_ids(self, text: str) -> list[int]:
        """The ids of `text` alone: no <start_of_text>, <end_of_text>, padding or truncation."""
        return self._content_ids(clean(text))

    def token_id(self, text: str) -> int:
        """The id of a text that is one token, e.g. the placeholder: token_id("$") == 259."""
        ids = self.token_ids(text)
        if len(ids) != 1:
            raise TokenizerError(
                f"{text!r} is {len(ids)} CLIP tokens {ids}, not one: a placeholder must be a single token "
                "(e.g. '$' or '*')."
            )
        return ids[0]
