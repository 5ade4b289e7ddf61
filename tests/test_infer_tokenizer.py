"""The torch-free CLIP tokenizer against open_clip's, on a seeded corpus of hostile and ordinary text."""

import json
import subprocess
import sys

import numpy as np
import open_clip
import pytest
from tokenizers import Tokenizer
from zscir_export.tokenizer_json import build_clip_tokenizer_json, tokenizer_manifest_entry

from zscir_infer.tokenizer import ClipTokenizer, TokenizerError, clean

CONTEXT = 77
SOT, EOT = 49406, 49407
CORPUS_SIZE = 10_000
SEED = 20240611

WORDS = (
    "a photo of the dog cat red blue two three make it bigger show them as origami sketch toy sculpture "
    "cartoon with without on in under next to wearing shirt dress striped floral sleeveless darker "
    "brighter same but more less background beach snow grass tree person people car bus bird"
).split()
UNICODE = [
    "café", "naïve", "Ångström", "résumé", "Zürich", "São Paulo", "Łódź", "İstanbul", "straße", "ΟΔΟΣ",
    "Ελληνικά", "ǅemal", "ﬁne ﬂag", "ｆｕｌｌｗｉｄｔｈ", "猫", "東京タワー", "한국어", "日本語の文章です",
    "שלום עולם", "مرحبا بالعالم", "فارسی", "\u202eabc\u202c", "हिन्दी", "ภาษาไทย", "ᾳ", "e\u0301",
    "a\u0308", "n\u0303", "\u0345", "z\u0336\u0317\u035a", "\u0300start", "Ꭰꭰ", "ſ", "'ſ", "K",
]
EMOJI = ["😀", "👍🏽", "👨\u200d👩\u200d👧", "🇯🇵", "❤️", "🐶🐱", "✨", "🤷‍♀️", "©", "™"]
ENTITIES = ["&amp;", "&amp;amp;", "&amp;amp;amp;", "&lt;b&gt;", "&#39;", "&quot;", "&nbsp;", "&#x1F600;",
            "&amp;lt;", "&eacute;", "&copy", "&#0;", "&#xD800;"]
PUNCT = list(",.!?;:-()[]{}\"'/\\|@#%^&~`_+=<>") + ["...", "—", "–", "«»", "“quoted”", "‘s", "’s", "?!"]
SPACES = [" ", "  ", "\t", "\u00a0", "\u200b", "\n", "\r\n", "\u2003", "\u3000", "\ufeff", "\x0b", "\x1c", "\u180e"]
PLACEHOLDERS = ["$", "*", "$$", "*$", "$*", "**", "$1", "*,", "($)", "US$"]
NUMBERS = ["0", "42", "3.14", "1,000,000", "2nd", "x2", "٣٤", "½", "²", "Ⅻ", "①", "१२३", "0x1F"]
CONTRACTIONS = ["it's", "don't", "they're", "we've", "I'm", "you'll", "he'd", "IT'S", "O'Neil",
                "rock 'n' roll", "y'all", "can't've", "'s", "'d"]
SPECIALS = ["<start_of_text>", "<end_of_text>", ".<end_of_text>", "<END_OF_TEXT>", "x<start_of_text>y"]
CONTROL = ["\x00", "\x1b[31mred\x1b[0m", "\x7f", "\x85", "\u2028", "\ud7ff", "\U0010fffd", "\U0001e5d0"]
FRAGMENTS = UNICODE + EMOJI + ENTITIES + PUNCT + PLACEHOLDERS + NUMBERS + CONTRACTIONS + SPECIALS + CONTROL
TEMPLATES = ["a photo of $ that {}", "a {} of *", "* , {}", "$ {}", "{} $", "{}$", "*{}", "a photo of $", "$"]


def _mixed_case(rng, text: str) -> str:
    style = rng.integers(4)
    if style == 0:
        return text.upper()
    if style == 1:
        return text.title()
    if style == 2:
        return "".join(c.upper() if rng.random() < 0.5 else c for c in text)
    return text


def _mojibake(rng, text: str) -> str:
    codec = ["latin-1", "cp1252", "cp437"][rng.integers(3)]
    return text.encode("utf-8").decode(codec, errors="replace")


def _random_code_points(rng, n: int) -> str:
    # Up to U+30000 reaches scripts newer than some Unicode tables (open_clip's regex vs others).
    cps = rng.integers(0x20, 0x30000, size=n)
    return "".join(chr(c) for c in cps if not 0xD800 <= c <= 0xDFFF)


def _mix(rng, pools: list[list[str]], n: int) -> str:
    parts = []
    for _ in range(n):
        pool = pools[rng.integers(len(pools))]
        parts.append(pool[rng.integers(len(pool))])
        parts.append(SPACES[rng.integers(len(SPACES))] if rng.random() < 0.7 else "")
    return "".join(parts)


def make_corpus(seed: int = SEED, size: int = CORPUS_SIZE) -> list[str]:
    """Deterministic: captions, templates with placeholders, every fragment kind, long and random text."""
    rng = np.random.default_rng(seed)
    everything = [WORDS, FRAGMENTS, WORDS, SPACES]
    corpus = list(FRAGMENTS) + ["", " ", "\t\n", "a " * 75, "a " * 76, "$ " * 80, "<end_of_text> " * 80]
    while len(corpus) < size:
        kind = rng.integers(10)
        if kind < 4:
            text = _mix(rng, everything, int(rng.integers(1, 20)))
        elif kind < 6:
            caption = _mix(rng, [WORDS, WORDS, FRAGMENTS], int(rng.integers(1, 12)))
            text = TEMPLATES[rng.integers(len(TEMPLATES))].format(caption)
        elif kind == 6:
            text = _mix(rng, [WORDS, WORDS, WORDS, PUNCT, PLACEHOLDERS], int(rng.integers(100, 400)))
        elif kind == 7:
            text = _random_code_points(rng, int(rng.integers(1, 30)))
        elif kind == 8:
            text = _mojibake(rng, _mix(rng, [UNICODE, WORDS, EMOJI, PUNCT], int(rng.integers(1, 8))))
        else:
            text = _mix(rng, [PLACEHOLDERS, WORDS, PUNCT, NUMBERS, CONTRACTIONS], int(rng.integers(1, 10)))
        corpus.append(_mixed_case(rng, text))
    return corpus


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("bundle") / "tokenizer.json"
    entry = build_clip_tokenizer_json(path)
    return path, entry


@pytest.fixture(scope="module")
def tokenizer(tokenizer_file):
    return ClipTokenizer.from_file(tokenizer_file[0])


@pytest.fixture(scope="module")
def corpus():
    return make_corpus()


@pytest.fixture(scope="module")
def reference_ids(corpus):
    return open_clip.get_tokenizer("ViT-B-32")(corpus).numpy()


def _show_mismatch(corpus, ours, ref):
    bad = np.flatnonzero((ours != ref).any(axis=1))
    i = bad[0] if len(bad) else 0
    return f"{len(bad)} of {len(corpus)} differ; first {corpus[i]!r}:\nours {ours[i].tolist()}\nref  {ref[i].tolist()}"


def test_ids_equal_open_clip_on_corpus(tokenizer, corpus, reference_ids):
    assert len(corpus) >= CORPUS_SIZE and len(set(corpus)) > 0.95 * len(corpus)
    ours = tokenizer(corpus)
    assert ours.dtype == np.int64 and ours.shape == (len(corpus), CONTEXT)
    assert np.array_equal(ours, reference_ids), _show_mismatch(corpus, ours, reference_ids)
    # The corpus really exercises the hard parts: placeholders, truncation, special tokens, non-ASCII.
    assert (reference_ids == 259).any(axis=1).sum() > 1000 and (reference_ids == 265).any(axis=1).sum() > 1000
    assert (reference_ids[:, -1] == EOT).sum() > 300
    assert ((reference_ids == EOT).sum(axis=1) > 1).sum() > 20
    assert sum(not t.isascii() for t in corpus) > 3000


def test_tokenizer_json_alone_matches_without_special_token_strings(tokenizer_file, corpus, reference_ids):
    """What a C++ program gets from the file alone, after the manifest's cleaning."""
    raw = Tokenizer.from_file(str(tokenizer_file[0]))
    cleaned = [clean(t) for t in corpus]
    keep = [i for i, t in enumerate(cleaned) if "<start_of_text>" not in t and "<end_of_text>" not in t]
    ids = np.array([e.ids for e in raw.encode_batch_fast([cleaned[i] for i in keep])])
    assert len(keep) > 0.9 * len(corpus)
    assert np.array_equal(ids, reference_ids[keep]), _show_mismatch([corpus[i] for i in keep], ids, reference_ids[keep])


def test_placeholder_ids(tokenizer, tokenizer_file):
    assert tokenizer.token_id("$") == 259 and tokenizer.token_id("*") == 265
    assert tokenizer_file[1]["placeholder_ids"] == {"$": 259, "*": 265}
    for text, position in [("$", 1), ("a photo of $ that is red", 4), ("a photo of $", 4), ("$that", 1),
                           ("a$b", 2), ("a cartoon of *", 4), ("* , red", 1), ("word*", 2)]:
        row = tokenizer([text])[0]
        assert row[position] in (259, 265), (text, row[:8])
    with pytest.raises(TokenizerError, match="not one"):
        tokenizer.token_id("hello world")


def test_truncation_keeps_eot_and_is_flagged(tokenizer):
    texts = ["a " * 75, "a " * 76, "a photo of $ that " + "very " * 300 + "red", "A"]
    ids, truncated = tokenizer.encode(texts, return_truncated=True)
    assert truncated.tolist() == [False, True, True, False]
    assert ids[0, 76] == EOT and ids[1, 76] == EOT and ids[2, 76] == EOT and ids[2, 4] == 259
    assert ids[0, 75] == ids[1, 75] == 320  # "a</w>": the content is cut, not the end-of-text token
    assert ids[3].tolist() == [SOT, 320, EOT] + [0] * 74
    _, flags = tokenizer.encode(["x " * 40 + "<end_of_text> " * 60, "<end_of_text>"], return_truncated=True)
    assert flags.tolist() == [True, False]


def test_int32_and_single_text(tokenizer):
    ids = tokenizer(["a photo of $"], dtype=np.int32)
    assert ids.dtype == np.int32
    assert np.array_equal(ids, tokenizer.encode("a photo of $"))
    assert tokenizer([]).shape == (0, CONTEXT)


def test_manifest_entry_and_atomic_file(tokenizer_file):
    path, entry = tokenizer_file
    assert entry == tokenizer_manifest_entry("tokenizer.json", CONTEXT)
    assert (entry["sot_id"], entry["eot_id"], entry["pad_id"], entry["context_length"]) == (SOT, EOT, 0, CONTEXT)
    assert entry["cleaning"] == ["ftfy.fix_text", "html.unescape x2", "whitespace collapse", "lowercase"]
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temp file left behind
    spec = json.loads(path.read_text())
    assert spec["model"]["type"] == "BPE" and spec["model"]["end_of_word_suffix"] == "</w>"
    assert spec["truncation"]["max_length"] == CONTEXT and spec["padding"]["pad_id"] == 0


def test_bad_files_give_actionable_errors(tmp_path):
    with pytest.raises(TokenizerError, match="does not exist"):
        ClipTokenizer.from_file(tmp_path / "missing.json")
    broken = tmp_path / "tokenizer.json"
    broken.write_text("{not json")
    with pytest.raises(TokenizerError, match="not a Hugging Face tokenizers JSON"):
        ClipTokenizer.from_file(broken)


def test_runtime_tokenizer_imports_without_torch():
    code = "import sys; sys.modules['torch'] = None; sys.modules['open_clip'] = None; import zscir_infer.tokenizer"
    subprocess.run([sys.executable, "-c", code], check=True)
