"""The CLIP BPE tokenizer as a Hugging Face `tokenizers` JSON, built from open_clip's own vocabulary.

The runtime (`zscir_infer.tokenizer`) and any C++ program tokenize with this file instead of open_clip.
It gives open_clip's ids exactly when the text is first cleaned as open_clip's default tokenizer does
(`open_clip.tokenizer._clean_lower`: ftfy.fix_text, html.unescape twice, whitespace collapsed, lowercase).
That cleaning cannot be written in the tokenizers format (ftfy is Python), so it is part of the contract
recorded in the manifest (`tokenizer_manifest_entry`), and the file itself has no normalizer.

Inside the file, the pipeline is CLIP's:
- pre-tokenizer: CLIP's regex, keeping the matches (Split, invert, "removed"), its character classes
  written out as code point ranges (see `clip_pretokenize_pattern`), then the byte-to-unicode map
  without its own regex (ByteLevel, use_regex=False);
- model: BPE over open_clip's 48,894 merges with the `</w>` end-of-word suffix;
- added tokens <start_of_text>, <end_of_text>: the literal strings in a text become their ids;
- post-processor: <start_of_text> $A <end_of_text> (49406, 49407); truncation to the context length,
  which keeps the end-of-text token last, as open_clip does; zero padding.

Known gap of the file alone: open_clip reads "<end_of_text>" right after punctuation (".<end_of_text>")
as punctuation and words, the file as the special token; `zscir_infer.tokenizer` handles that case.
"""

from __future__ import annotations

import functools
import os

import ftfy
import regex
from open_clip.tokenizer import SimpleTokenizer
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors

from zscir_infer.atomic import atomic_write_text

DEFAULT_CONTEXT_LENGTH = 77
TOKENIZER_FILE = "tokenizer.json"
SOT_TOKEN = "<start_of_text>"
EOT_TOKEN = "<end_of_text>"
PAD_ID = 0
END_OF_WORD = "</w>"
# open_clip's SimpleTokenizer.pat, compiled there with the `regex` module and re.IGNORECASE: special
# tokens, contractions, letter runs, single digits, runs of everything else but whitespace.
CLIP_ALTERNATIVES = ("<start_of_text>", "<end_of_text>", "'s", "'t", "'re", "'ve", "'m", "'ll", "'d")
CLIP_CLASSES = (r"[\p{L}]+", r"[\p{N}]", r"[^\s\p{L}\p{N}]+")
UNICODE_SEGMENTS = ((0, 0xD7FF), (0xE000, 0x10FFFF))  # every code point but the surrogates
# The cleaning open_clip applies before its regex (clean="lower", the default of every CLIP model).
CLEANING_STEPS = ["ftfy.fix_text", "html.unescape x2", "whitespace collapse", "lowercase"]
# The placeholders the methods use (DESIGN §1): a lone character is its "</w>" token.
PLACEHOLDERS = ("$", "*")


@functools.lru_cache(maxsize=1)
def _unicode_segments() -> list[tuple[int, str]]:
    return [(first, "".join(map(chr, range(first, last + 1)))) for first, last in UNICODE_SEGMENTS]


def _code_point_ranges(pattern: str) -> list[tuple[int, int]]:
    """The code points one character of `pattern` matches under open_clip's flags, as ranges."""
    ranges = []
    for first, segment in _unicode_segments():
        for run in regex.finditer(f"(?:{pattern})+", segment, regex.IGNORECASE):
            ranges.append((first + run.start(), first + run.end() - 1))
    return ranges


def _char_class(ranges: list[tuple[int, int]]) -> str:
    parts = [f"\\x{{{a:X}}}" if a == b else f"\\x{{{a:X}}}-\\x{{{b:X}}}" for a, b in ranges]
    return "[" + "".join(parts) + "]"


@functools.lru_cache(maxsize=1)
def clip_pretokenize_pattern() -> str:
    """open_clip's regex for Oniguruma (the engine of `tokenizers`), with explicit character classes.

    `[\\p{L}]` in the `regex` module and in Oniguruma disagree on the code points one of them knows
    and the other does not yet (their Unicode versions differ), and IGNORECASE changes a few classes
    (U+0345 falls in none; an apostrophe and a long s, U+017F, make a contraction). So every class is written out as the code
    point ranges the installed `regex` module matches with open_clip's flags: same matches, any engine.
    """
    literal_alternatives = [
        "".join(_char_class(_code_point_ranges(regex.escape(ch))) for ch in alternative)
        for alternative in CLIP_ALTERNATIVES
    ]
    class_alternatives = [
        _char_class(_code_point_ranges(cls.rstrip("+"))) + ("+" if cls.endswith("+") else "")
        for cls in CLIP_CLASSES
    ]
    return "|".join(literal_alternatives + class_alternatives)


def build_clip_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """The CLIP tokenizer as a `tokenizers.Tokenizer`; ids equal open_clip's on cleaned text."""
    clip = SimpleTokenizer()
    merges = sorted(clip.bpe_ranks, key=clip.bpe_ranks.__getitem__)  # rank order
    bpe = models.BPE(vocab=dict(clip.encoder), merges=merges, end_of_word_suffix=END_OF_WORD, fuse_unk=False)
    tokenizer = Tokenizer(bpe)
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(clip_pretokenize_pattern()), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    # Special tokens in the input text become their ids, as open_clip's regex and cache do.
    tokenizer.add_special_tokens([AddedToken(SOT_TOKEN, normalized=False), AddedToken(EOT_TOKEN, normalized=False)])
    sot_id, eot_id = clip.sot_token_id, clip.eot_token_id
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{SOT_TOKEN} $A {EOT_TOKEN}", special_tokens=[(SOT_TOKEN, sot_id), (EOT_TOKEN, eot_id)]
    )
    tokenizer.decoder = decoders.Sequence(
        [decoders.ByteLevel(), decoders.Replace(END_OF_WORD, " "), decoders.Strip(" ", 0, 1)]
    )
    _check_ids(tokenizer, clip)
    tokenizer.enable_truncation(max_length=context_length)
    tokenizer.enable_padding(length=context_length, pad_id=PAD_ID, pad_token=clip.decoder[PAD_ID])
    return tokenizer


def _check_ids(tokenizer: Tokenizer, clip: SimpleTokenizer) -> None:
    """The ids the bundle depends on, checked against open_clip's own vocabulary."""
    expected = {SOT_TOKEN: clip.sot_token_id, EOT_TOKEN: clip.eot_token_id}
    expected.update({p: clip.encoder[p + END_OF_WORD] for p in PLACEHOLDERS})
    for text, want in expected.items():
        ids = tokenizer.encode(text, add_special_tokens=False).ids
        if ids != [want]:
            raise RuntimeError(f"tokenizer.json maps {text!r} to {ids}, open_clip to [{want}]: the build is broken.")


def placeholder_ids() -> dict[str, int]:
    """Placeholder character -> its BPE id in open_clip's vocabulary ({'$': 259, '*': 265})."""
    encoder = SimpleTokenizer().encoder
    return {p: encoder[p + END_OF_WORD] for p in PLACEHOLDERS}


def tokenizer_manifest_entry(
    file: str = TOKENIZER_FILE, context_length: int = DEFAULT_CONTEXT_LENGTH
) -> dict:
    """What the bundle manifest records about the tokenizer (the file's sha256 is added by the bundle)."""
    clip = SimpleTokenizer()
    return {
        "file": file,
        "format": "huggingface-tokenizers",
        "context_length": context_length,
        "sot_id": clip.sot_token_id,
        "eot_id": clip.eot_token_id,
        "pad_id": PAD_ID,
        "vocab_size": clip.vocab_size,
        "truncation": "keep the first context_length - 1 tokens, then end-of-text",
        "cleaning": list(CLEANING_STEPS),
        "cleaning_reference": "open_clip.tokenizer._clean_lower: "
        "' '.join(html.unescape(html.unescape(ftfy.fix_text(t))).split()).lower()",
        "ftfy_version": ftfy.__version__,
        "placeholder_ids": placeholder_ids(),
        "placeholder_note": "a placeholder is a lone character, so its id is that of the '</w>' token; "
        "the bundle's own placeholder is recorded at the manifest's top level.",
    }


def build_clip_tokenizer_json(path: str | os.PathLike, context_length: int = DEFAULT_CONTEXT_LENGTH) -> dict:
    """Write the CLIP tokenizer to `path` atomically; return its manifest entry."""
    tokenizer = build_clip_tokenizer(context_length)
    atomic_write_text(path, tokenizer.to_str(pretty=True))
    return tokenizer_manifest_entry(os.path.basename(os.fspath(path)), context_length)
