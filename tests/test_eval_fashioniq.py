"""FashionIQ: the reader (both trees, both image formats), caption cleaning and orders, recall by hand."""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking

import numpy as np
import pytest

from tests.fixtures.eval_layouts import make_fashioniq, write_json
from zscir_eval import DatasetError
from zscir_eval.fashioniq import (
    category_metrics,
    clean_caption,
    fashioniq_metrics,
    joined_captions,
    read_fashioniq,
)
from zscir_eval.templates import BOTH_ORDERS, LINCIR, PIC2WORD, fashioniq_clean, fashioniq_orders


def test_caption_cleaning_strips_the_official_characters():
    assert clean_caption(" is red.") == "is red"
    assert clean_caption(", is longer ?") == "is longer"
    assert clean_caption("has a v-neck, and dots.?") == "has a v-neck, and dots"


@pytest.mark.parametrize(("suffix", "captions_dir"), [(".jpg", "captions"), (".png", "json")])
def test_reader(tmp_path, suffix, captions_dir):
    data = read_fashioniq(make_fashioniq(tmp_path, suffix, captions_dir), "val")
    assert [c.name for c in data.categories] == ["dress", "shirt", "toptee"]
    dress = data.categories[0]
    assert len(dress.gallery) == 8 and all(
        ref.path.suffix == suffix and ref.path.is_file() for ref in dress.gallery
    )
    q = dress.queries[0]
    assert (q.candidate, q.target) == ("B0000000X", "B0000001X")
    assert q.captions == ("is red", "has short sleeves")
    assert q.raw_captions == ("is red.", " has short sleeves ?")
    assert dress.queries[1].captions == ("is longer", "is darker and shinier")


def test_a_split_listing_a_target_twice_is_refused(fashioniq_root):
    # the official assertion (one match per query) fails on it; scoring it at one listing would be silent
    split_file = fashioniq_root / "image_splits" / "split.shirt.val.json"
    ids = [f"B001{i:04d}X" for i in range(8)]
    write_json(split_file, [*ids, "B0010005X"])  # B0010005X is the target of the second shirt query
    with pytest.raises(DatasetError, match="B0010005X") as info:
        read_fashioniq(fashioniq_root)
    assert str(split_file) in str(info.value) and "more than once" in str(info.value)
    write_json(split_file, [*ids, "B0010007X"])  # a repeated non-target stays, as in the official gallery
    shirt = read_fashioniq(fashioniq_root).categories[1]
    assert [ref.key for ref in shirt.gallery].count("B0010007X") == 2


def test_test_split_is_refused(fashioniq_root):
    with pytest.raises(ValueError, match="only"):
        read_fashioniq(fashioniq_root, "test")


def test_caption_orders_per_method_and_style(fashioniq_root):
    q = read_fashioniq(fashioniq_root).categories[0].queries[0]
    assert fashioniq_orders("phi", LINCIR) == BOTH_ORDERS  # LinCIR averages both orders
    assert [joined_captions(q, o) for o in BOTH_ORDERS] == [
        "is red and has short sleeves",
        "has short sleeves and is red",
    ]
    (order,) = fashioniq_orders("phi", PIC2WORD)  # Pic2Word's data.py: "{cap2} and {cap1}"
    assert joined_captions(q, order) == "has short sleeves and is red"
    (order,) = fashioniq_orders("slerp", LINCIR)
    assert joined_captions(q, order) == "is red and has short sleeves"


def test_captions_are_cleaned_per_method(fashioniq_root):
    # LinCIR/SEARLE strip ".?, " (validate.py); Pic2Word's data.py formats the raw captions:
    # 'a photo of * , {cap2} and {cap1}'. Slerp and the baselines follow LinCIR/SEARLE.
    q = read_fashioniq(fashioniq_root).categories[0].queries[0]
    assert (
        fashioniq_clean("phi", LINCIR)
        and fashioniq_clean("slerp", PIC2WORD)
        and fashioniq_clean("text", LINCIR)
    )
    assert not fashioniq_clean("phi", PIC2WORD)
    (order,) = fashioniq_orders("phi", PIC2WORD)
    assert joined_captions(q, order, fashioniq_clean("phi", PIC2WORD)) == " has short sleeves ? and is red."
    assert joined_captions(q, (0, 1), fashioniq_clean("phi", LINCIR)) == "is red and has short sleeves"


def test_recall_by_hand(fashioniq_root):
    dress = read_fashioniq(fashioniq_root).categories[0]  # targets are gallery items 1 and 5
    I = np.full((2, 50), 40)  # the metric reads indices only: 40 stands for any non-target item
    I[0, :12] = [9, 8, 7, 6, 4, 3, 2, 0, 10, 11, 1, 12]  # target 1 at rank 11: in the top 50 only
    I[1, :3] = [0, 2, 5]  # target 5 at rank 3
    assert category_metrics(dress, I) == pytest.approx({"R@10": 50.0, "R@50": 100.0})


def test_averages_over_categories():
    per = {
        "dress": {"R@10": 20.0, "R@50": 40.0},
        "shirt": {"R@10": 30.0, "R@50": 50.0},
        "toptee": {"R@10": 40.0, "R@50": 60.0},
    }
    m = fashioniq_metrics(per)
    assert m["shirt/R@50"] == 50.0
    assert m["avg/R@10"] == pytest.approx(30.0) and m["avg/R@50"] == pytest.approx(50.0)
    assert m["avg"] == pytest.approx(40.0)
