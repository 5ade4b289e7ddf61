"""LinCIR's self-masking projection on hand-checked captions, and its on-disk cache."""

from types import SimpleNamespace

import numpy as np
import pytest

from zscir_train.training.masking import (
    FALLBACK_PROMPT,
    KIND_FALLBACK,
    KIND_KEYWORDS,
    KIND_RANDOM_WORD,
    MaskedCorpus,
    build_masked_corpus,
    cache_key,
    clean_caption,
    keyword_runs,
    load_spacy,
    self_mask,
    tokenize_pairs,
)

PLACEHOLDER_ID = 259  # "$</w>" in the CLIP BPE vocabulary
EOT_ID = 49407


@pytest.fixture(scope="module")
def nlp():
    return load_spacy()


@pytest.fixture(scope="module")
def tokenizer(tiny_backbone):
    return tiny_backbone.tokenizer


def tokens(*pairs):
    """A stand-in spaCy doc: (text, POS) tokens separated by single spaces."""
    out, idx = [], 0
    for text, pos in pairs:
        out.append(SimpleNamespace(text=text, pos_=pos, idx=idx))
        idx += len(text) + 1
    return out


def test_runs_are_maximal_and_cover_noun_propn_adj_det():
    doc = tokens(("a", "DET"), ("big", "ADJ"), ("dog", "NOUN"), ("chases", "VERB"), ("the", "DET"),
                 ("paris", "PROPN"), ("cat", "NOUN"), ("quickly", "ADV"), ("home", "NOUN"))
    text = "a big dog chases the paris cat quickly home"
    assert [text[s:e] for s, e in keyword_runs(doc)] == ["a big dog", "the paris cat", "home"]
    assert keyword_runs(tokens(("runs", "VERB"), ("fast", "ADV"))) == []


def test_several_keyword_runs_one_placeholder_each(nlp, tokenizer):
    captions = ["A man riding a horse on the beach at sunset", "The red cube, drawn as a sketch"]
    cleaned, masked, kinds, original, masked_ids = self_mask(captions, nlp, tokenizer)
    assert cleaned == ["a man riding a horse on the beach at sunset", "the red cube, drawn as a sketch"]
    assert masked == ["$ riding $ on $ at $", "$ , drawn as $"]
    assert kinds.tolist() == [KIND_KEYWORDS, KIND_KEYWORDS]
    assert (masked_ids == PLACEHOLDER_ID).sum(axis=1).tolist() == [4, 2]
    assert np.array_equal(original, tokenizer(cleaned).numpy())  # e_T is computed on the cleaned caption
    assert original.dtype == masked_ids.dtype == np.uint16


def test_no_keyword_masks_one_random_word_deterministically(nlp, tokenizer):
    captions = ["jumps over", "running fast"]
    _, masked, kinds, _, masked_ids = self_mask(captions, nlp, tokenizer)
    assert kinds.tolist() == [KIND_RANDOM_WORD, KIND_RANDOM_WORD]
    for caption, text in zip(captions, masked, strict=True):
        before, after = caption.split(), text.split()
        assert len(after) == len(before) and sum(a != b for a, b in zip(before, after, strict=True)) == 1
        assert after.count("$") == 1
    assert (masked_ids == PLACEHOLDER_ID).sum(axis=1).tolist() == [1, 1]
    assert self_mask(captions, nlp, tokenizer)[1] == masked  # seeded by the caption: the cache is reproducible


def test_cleaning_drops_dollars_and_person_tags(nlp, tokenizer):
    cleaned, masked, _, original, _ = self_mask(["A photo of <PERSON> holding a $5 bill"], nlp, tokenizer)
    assert cleaned == ["a photo of person holding a 5 bill"]
    assert PLACEHOLDER_ID not in original[0]  # a `$` in a caption would become the pseudo-token
    assert masked[0].count("$") == 4  # "a photo", "person", "a", "bill"


def test_truncation_cuts_to_75_tokens_and_drops_late_keywords(nlp, tokenizer):
    caption = " ".join(["go"] * 90) + " red car"  # only keywords lie past the 75-token cut
    assert clean_caption(caption, tokenizer, 77) == " ".join(["go"] * 75)
    cleaned, masked, kinds, original, _ = self_mask([caption], nlp, tokenizer)
    assert "red" not in cleaned[0] and kinds[0] == KIND_RANDOM_WORD
    assert original[0, 76] == EOT_ID and masked[0].split().count("$") == 1


def test_placeholder_lost_to_truncation_gives_the_fallback_prompt(tokenizer):
    captions = ["words " * 80, "a $ here"]
    masked = ["words " * 80 + "$", "a $ here"]  # the first placeholder sits past the context
    kinds = np.array([KIND_KEYWORDS, KIND_KEYWORDS], dtype=np.uint8)
    _, masked_ids = tokenize_pairs(captions, masked, kinds, tokenizer)
    assert kinds.tolist() == [KIND_FALLBACK, KIND_KEYWORDS]
    assert np.array_equal(masked_ids[0], tokenizer([FALLBACK_PROMPT]).numpy()[0])
    assert (masked_ids[1] == PLACEHOLDER_ID).sum() == 1


def test_empty_caption_gives_the_fallback_prompt(nlp, tokenizer):
    _, masked, kinds, _, _ = self_mask(["$$$", "   "], nlp, tokenizer)
    assert masked == [FALLBACK_PROMPT, FALLBACK_PROMPT] and kinds.tolist() == [KIND_FALLBACK] * 2


def test_cache_is_built_once_and_keyed_by_content(tmp_path, nlp, tokenizer, monkeypatch):
    corpus = tmp_path / "captions.txt"
    corpus.write_text("a red star on a blue background\njumps over\n\na small green square\n")
    first = build_masked_corpus([str(corpus)], None, tokenizer, tmp_path / "cache", show_progress=False)
    assert isinstance(first, MaskedCorpus) and len(first) == 3  # the blank line is skipped
    assert first.meta["kinds"] == {"keywords": 2, "random_word": 1, "fallback_prompt": 0}
    _, _, _, original, masked = self_mask(corpus.read_text().split("\n")[:2] + ["a small green square"], nlp, tokenizer)
    assert np.array_equal(first.original, original) and np.array_equal(first.masked, masked)

    def no_spacy(*args, **kwargs):
        raise AssertionError("a cache hit must not run spaCy")

    monkeypatch.setattr("zscir_train.training.masking.self_mask", no_spacy)
    again = build_masked_corpus([str(corpus)], None, tokenizer, tmp_path / "cache", show_progress=False)
    assert again.path == first.path
    corpus.write_text("a red star on a blue background\n")
    with pytest.raises(AssertionError, match="cache hit"):
        build_masked_corpus([str(corpus)], None, tokenizer, tmp_path / "cache", show_progress=False)


def test_cache_key_changes_with_the_spacy_model(tokenizer):
    def fake(name, version):
        return SimpleNamespace(meta={"lang": "en", "name": name, "version": version})

    keys = {cache_key("0" * 64, fake(n, v), tokenizer)[0] for n, v in
            (("core_web_sm", "3.8.0"), ("core_web_sm", "3.7.1"), ("core_web_trf", "3.8.0"))}
    assert len(keys) == 3
