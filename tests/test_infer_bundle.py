"""Bundle loading: the manifest's fields, schema validation, format versions, and sha256 verification
with errors that name the file and the way out."""

import json
import os
import shutil

import numpy as np
import pytest

from zscir_infer import BundleError, Runtime, load_bundle
from zscir_infer import bundle as bundle_module
from zscir_infer.bundle import FORMAT_VERSION, sha256_file


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Remembered sha256 matches go to this test's folder, not the user's cache."""
    monkeypatch.setenv("ZSCIR_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def hash_calls(monkeypatch) -> list:
    """The files hashed from now on."""
    calls = []

    def counting(path):
        calls.append(path.name)
        return sha256_file(path)

    monkeypatch.setattr(bundle_module, "sha256_file", counting)
    return calls


@pytest.fixture
def bundle_copy(tiny_bundle, tmp_path):
    """A private copy of the tiny bundle that a test may damage."""
    return shutil.copytree(tiny_bundle, tmp_path / "bundle")


def edit_manifest(bundle, change) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    change(manifest)
    path.write_text(json.dumps(manifest))


def test_the_manifest_fields_are_exposed(tiny_bundle, tiny_slerp_bundle, tiny_pic2word_bundle):
    b = load_bundle(tiny_bundle)
    assert b.method in ("lincir", "searle") and b.default_method == "phi" and b.has_phi
    assert (b.placeholder, b.placeholder_id) == ("$", 259)
    assert b.embed_dim == 48 and b.context_length == 77 and 0.0 <= b.slerp_alpha <= 1.0
    assert "$" in b.templates["default"] and "{caption}" in b.templates["default"]
    assert b.preprocess.image_size == 32
    assert "fp32" in b.precisions("image_encoder") and "fp32" in b.precisions("text_encoder")
    assert (load_bundle(tiny_pic2word_bundle).placeholder, load_bundle(tiny_pic2word_bundle).placeholder_id) == ("*", 265)
    s = load_bundle(tiny_slerp_bundle)
    assert s.method == "slerp" and s.placeholder is None and not s.has_phi and s.default_method == "slerp"
    summary = b.summary()
    assert summary["bundle_id"] == b.bundle_id and "image_encoder.fp32" in summary["graphs"]


def test_every_file_matches_its_recorded_sha256(tiny_bundle):
    b = load_bundle(tiny_bundle)
    b.verify_all()
    assert {f.key for f in b.files()} >= {"tokenizer", "graphs.image_encoder.fp32", "graphs.text_encoder.fp32"}
    for f in b.files():
        assert sha256_file(f.path) == f.sha256


def test_a_changed_graph_is_refused_naming_the_file_and_the_remedy(bundle_copy):
    graph = load_bundle(bundle_copy).graph("image_encoder").file.path
    data = bytearray(graph.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the last weight
    graph.write_bytes(bytes(data))
    with pytest.raises(BundleError, match=rf"{graph.name}.*graphs\.image_encoder\.fp32.*sha256.*re-export"):
        load_bundle(bundle_copy).verify_all()
    rt = Runtime(bundle_copy)  # loading is cheap; the graph is checked before its first use
    with pytest.raises(BundleError, match="corrupt or was changed"):
        rt.encode_pixels(np.zeros((1, 3, 32, 32), dtype=np.float32))
    rt.encode_texts(["a red circle"])  # the other graphs are intact and still run
    Runtime(bundle_copy, verify=False)  # an explicit opt-out loads


def test_a_changed_tokenizer_is_refused_when_the_runtime_starts(bundle_copy):
    tokenizer = bundle_copy / "tokenizer.json"
    tokenizer.write_text(tokenizer.read_text().replace('"<start_of_text>"', '"<start_of_txt>"', 1))
    with pytest.raises(BundleError, match=r"tokenizer\.json \(manifest tokenizer\) is corrupt"):
        Runtime(bundle_copy)


def test_a_missing_file_is_refused_at_load(bundle_copy):
    (bundle_copy / "tokenizer.json").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.json \(manifest tokenizer\) is missing.*re-export"):
        load_bundle(bundle_copy)


def test_a_newer_format_version_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(format_version=FORMAT_VERSION + 1))
    with pytest.raises(BundleError, match=rf"format_version {FORMAT_VERSION + 1}, newer.*upgrade zscir"):
        load_bundle(bundle_copy)


def test_what_is_not_a_bundle_is_refused(tmp_path, bundle_copy):
    with pytest.raises(BundleError, match="not a directory"):
        load_bundle(tmp_path / "nowhere")
    with pytest.raises(BundleError, match="has no manifest.json"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(BundleError, match="not valid JSON"):
        load_bundle(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps({"format": "onnx-model"}))
    with pytest.raises(BundleError, match="not a zscir bundle"):
        load_bundle(tmp_path)


def test_a_manifest_that_breaks_the_schema_is_refused_with_the_field(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m.update(embed_dim="forty-eight"))
    with pytest.raises(BundleError, match=r"does not match the bundle schema[\s\S]*embed_dim"):
        load_bundle(bundle_copy)


def test_files_outside_the_bundle_are_refused(bundle_copy):
    shutil.copy(bundle_copy / "tokenizer.json", bundle_copy.parent / "tokenizer.json")
    edit_manifest(bundle_copy, lambda m: m["tokenizer"].update(file="../tokenizer.json"))
    with pytest.raises(BundleError, match="outside the bundle|schema"):
        load_bundle(bundle_copy)


def test_bundle_id_is_the_models_identity(tiny_bundle, bundle_copy, tiny_slerp_bundle):
    original = load_bundle(tiny_bundle)
    assert load_bundle(bundle_copy).bundle_id == original.bundle_id  # a copy elsewhere is the same bundle
    assert load_bundle(tiny_slerp_bundle).bundle_id != original.bundle_id
    edit_manifest(bundle_copy, lambda m: m.update(created="2000-01-01T00:00:00Z"))
    assert load_bundle(bundle_copy).bundle_id == original.bundle_id  # metadata is not identity
    edit_manifest(bundle_copy, lambda m: m["graphs"]["image_encoder"]["fp32"].update(sha256="0" * 64))
    changed = load_bundle(bundle_copy)
    assert changed.bundle_id != original.bundle_id and changed.image_space_id != original.image_space_id


def test_a_match_is_remembered_for_the_untouched_file_only(bundle_copy, hash_calls, monkeypatch):
    monkeypatch.setattr(bundle_module, "RACY_SECONDS", 0.0)  # the copy was written a moment ago
    files = load_bundle(bundle_copy).files()
    load_bundle(bundle_copy).verify_all()
    assert len(hash_calls) == len(files)
    hash_calls.clear()
    load_bundle(bundle_copy).verify_all()  # another process, the same files: nothing hashed
    assert hash_calls == []
    graph = load_bundle(bundle_copy).graph("text_encoder").file.path
    before = graph.stat()
    data = bytearray(graph.read_bytes())
    data[len(data) // 2] ^= 0x01
    graph.write_bytes(bytes(data))  # same size, same inode
    os.utime(graph, ns=(before.st_atime_ns, before.st_mtime_ns))  # and the old mtime: ctime still moves
    with pytest.raises(BundleError, match="text_encoder.*corrupt or was changed"):
        load_bundle(bundle_copy).verify_all()
    assert hash_calls == [graph.name]
    hash_calls.clear()
    load_bundle(bundle_copy).verified(load_bundle(bundle_copy).tokenizer_file, rehash=True)
    assert hash_calls == ["tokenizer.json"]  # rehash ignores what is remembered


def test_a_file_changed_moments_ago_is_not_remembered(bundle_copy, hash_calls):
    tokenizer = load_bundle(bundle_copy).tokenizer_file
    load_bundle(bundle_copy).verified(tokenizer)
    load_bundle(bundle_copy).verified(tokenizer)  # written by copytree < RACY_SECONDS ago: hashed again
    assert hash_calls == ["tokenizer.json", "tokenizer.json"]


def test_a_placeholder_id_the_tokenizer_does_not_produce_is_refused(bundle_copy):
    edit_manifest(bundle_copy, lambda m: m["placeholder"].update(id=265))  # '*' (Pic2Word), not '$'
    with pytest.raises(BundleError, match=r"placeholder '\$' id 259, the manifest .* expects 265"):
        Runtime(bundle_copy)
