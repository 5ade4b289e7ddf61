"""Property-based fuzzing (hypothesis) of the three inputs a service takes from users: text (the
tokenizer, against open_clip's), image files (decoding and preprocessing, against open_clip's
transform) and whole composed queries through the torch-free Runtime.

The only exceptions allowed are the documented ones (ImageLoadError and its subclass for images); every
other outcome must be a correct result. Each test counts the inputs it tried; run with `-s` to see the
counts (`fuzz: ...` lines), which the reliability note reports.
"""

import io
import zlib
from collections import Counter

import numpy as np
import open_clip
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from zscir_export.tokenizer_json import build_clip_tokenizer_json

from tests.test_infer_preprocess import MEAN, STD, open_clip_transform, synthetic_image
from zscir_infer import Runtime
from zscir_infer.errors import ZscirError
from zscir_infer.preprocess import (
    ImageLoadError,
    ImageTooLargeError,
    PreprocessConfig,
    load_image,
    preprocess_image,
)
from zscir_infer.tokenizer import ClipTokenizer

TEXT_EXAMPLES, IMAGE_EXAMPLES, BYTES_EXAMPLES, QUERY_EXAMPLES = 400, 150, 400, 60
CONTEXT, SOT, EOT = 77, 49406, 49407
SPECIAL_PIECES = ["$", "*", "<end_of_text>", "<start_of_text>", "&amp;", "&lt;b&gt;", "\u200b", "\x00", "🎉", "e\u0301"]
MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "CMYK", "I;16", "I", "F"]
FORMATS = {"PNG": ("1", "L", "LA", "P", "RGB", "RGBA", "I;16"), "JPEG": ("L", "RGB", "CMYK"),
           "GIF": ("L", "P"), "TIFF": ("1", "L", "RGB", "RGBA", "CMYK", "F"), "WEBP": ("RGB", "RGBA"),
           "BMP": ("1", "L", "P", "RGB")}
COUNTS: Counter = Counter()
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
                derandomize=True, database=None)

# Text: arbitrary unicode, weighted towards what breaks tokenizers (specials, entities, marks, spaces).
texts = st.lists(st.one_of(st.text(max_size=40), st.sampled_from(SPECIAL_PIECES),
                           st.text(alphabet=st.characters(categories=["Zs", "Cc", "Cf", "Mn", "So"]), max_size=8)),
                 max_size=12).map("".join)


@pytest.fixture(scope="module", autouse=True)
def report_counts():
    yield
    print("\nfuzz: " + ", ".join(f"{k} {v}" for k, v in sorted(COUNTS.items())))


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    build_clip_tokenizer_json(path)
    return ClipTokenizer.from_file(path), open_clip.get_tokenizer("ViT-B-32")


@settings(FUZZ, max_examples=TEXT_EXAMPLES)
@given(text=texts)
def test_tokenizer_equals_open_clip_on_any_text(tokenizers, text):
    ours, reference = tokenizers
    COUNTS["texts"] += 1
    ids = ours([text])[0]
    np.testing.assert_array_equal(ids, reference([text])[0].numpy(), err_msg=repr(text))
    assert ids.shape == (CONTEXT,) and ids[0] == SOT and EOT in ids


@st.composite
def images(draw):
    mode = draw(st.sampled_from(MODES))
    width, height = draw(st.integers(1, 160)), draw(st.integers(1, 160))
    return synthetic_image(np.random.default_rng(draw(st.integers(0, 2**32 - 1))), width, height, mode)


@settings(FUZZ, max_examples=IMAGE_EXAMPLES)
@given(image=images(), size=st.sampled_from([16, 32, 61]), resize_mode=st.sampled_from(["shortest", "squash", "longest"]))
def test_preprocessing_equals_open_clip_on_any_image(image, size, resize_mode):
    COUNTS["images"] += 1
    cfg = PreprocessConfig(size, MEAN, STD, resize_mode=resize_mode)
    loaded = load_image(image)
    ours = preprocess_image(loaded, cfg)
    assert ours.shape == (3, size, size) and np.isfinite(ours).all()
    try:
        reference = open_clip_transform(cfg)(loaded).numpy()
    except ValueError:  # open_clip rounds a sliver's short side to 0 pixels ("longest"); ours keeps 1
        assert resize_mode == "longest" and min(loaded.size) * size < max(loaded.size)
        COUNTS["images-open_clip-fails"] += 1
        return
    assert np.abs(ours - reference).max() <= 1e-6


@st.composite
def damaged_files(draw):
    """A real encoded image, then truncated, bit-flipped, spliced or replaced by random bytes."""
    fmt = draw(st.sampled_from(sorted(FORMATS)))
    mode = draw(st.sampled_from(FORMATS[fmt]))
    image = synthetic_image(np.random.default_rng(draw(st.integers(0, 2**16))), draw(st.integers(1, 48)),
                            draw(st.integers(1, 48)), mode)
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    data = bytearray(buf.getvalue())
    damage = draw(st.sampled_from(["none", "truncate", "flip", "splice", "random", "empty"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, len(data)))]
    elif damage == "flip":
        for _ in range(draw(st.integers(1, 8))):
            data[draw(st.integers(0, len(data) - 1))] ^= 1 << draw(st.integers(0, 7))
    elif damage == "splice":
        at = draw(st.integers(0, len(data)))
        data[at:at] = draw(st.binary(min_size=1, max_size=64))
    elif damage == "random":
        data = bytearray(draw(st.binary(max_size=256)))
    elif damage == "empty":
        data = bytearray()
    return fmt, damage, bytes(data)


@settings(FUZZ, max_examples=BYTES_EXAMPLES)
@given(case=damaged_files())
def test_damaged_image_files_decode_or_raise_the_documented_error(case):
    fmt, damage, data = case
    COUNTS[f"files-{damage}"] += 1
    try:
        image = load_image(data, max_pixels=1 << 20)
    except ImageLoadError as exc:
        COUNTS["files-refused"] += 1
        message = str(exc)
        assert damage != "none", f"an intact {fmt} file was refused: {message}"
        assert isinstance(exc, ZscirError)  # a user error: the command-line tools print it as one line
        assert message.startswith(f"<{len(data)} bytes> "), message  # it names what it refuses
        if isinstance(exc, ImageTooLargeError):
            assert f"above the limit of {1 << 20:,}" in message or "too large" in message, message
        return
    assert image.mode == "RGB" and image.size[0] >= 1 and image.size[1] >= 1
    pixels = preprocess_image(image, PreprocessConfig(16, MEAN, STD))
    assert np.isfinite(pixels).all()


def test_a_png_bomb_is_refused_before_decoding():
    """A tiny file that inflates to 40k x 40k pixels: refused from its header, in well under its size."""
    raw = zlib.compress(b"\x00" * 1000, 9)
    header = _png_chunk(b"IHDR", (40_000).to_bytes(4, "big") * 2 + bytes([8, 0, 0, 0, 0]))
    data = b"\x89PNG\r\n\x1a\n" + header + _png_chunk(b"IDAT", raw) + _png_chunk(b"IEND", b"")
    with pytest.raises(ImageLoadError, match="pixels"):
        load_image(data)


def _png_chunk(kind: bytes, body: bytes) -> bytes:
    return len(body).to_bytes(4, "big") + kind + body + zlib.crc32(kind + body).to_bytes(4, "big")


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    with Runtime(tiny_bundle) as rt:
        yield rt


@settings(FUZZ, max_examples=QUERY_EXAMPLES)
@given(image=images(), text=texts, method=st.sampled_from(["phi", "slerp", "image", "text", "average"]))
def test_any_query_gives_finite_unit_features(runtime, image, text, method):
    COUNTS["queries"] += 1
    q = runtime.encode_queries([(image, text), (Image.new("RGB", (8, 8)), text)], method=method)
    assert q.shape == (2, runtime.embed_dim) and q.dtype == np.float32 and np.isfinite(q).all()
    np.testing.assert_allclose(np.linalg.norm(q, axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_give_their_first_frame(fmt):
    frames = [Image.new("RGB", (24, 16), color) for color in ((220, 20, 20), (20, 20, 220), (20, 220, 20))]
    buf = io.BytesIO()
    frames[0].save(buf, format=fmt, save_all=True, append_images=frames[1:], duration=50, loop=0)
    if fmt == "PNG":
        assert Image.open(io.BytesIO(buf.getvalue())).n_frames == 3  # APNG
    first = np.asarray(load_image(buf.getvalue()), dtype=int)
    assert first.shape == (16, 24, 3) and first[..., 0].mean() > 150 and first[..., 2].mean() < 80


@pytest.mark.parametrize("size", [(1, 1), (1, 4000), (4000, 1), (3, 2)])
def test_extreme_sizes_preprocess(size):
    image = Image.new("RGB", size, (90, 120, 200))
    for resize_mode in ("shortest", "squash", "longest"):
        pixels = preprocess_image(load_image(image), PreprocessConfig(32, MEAN, STD, resize_mode=resize_mode))
        assert pixels.shape == (3, 32, 32) and np.isfinite(pixels).all()
