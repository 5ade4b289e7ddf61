"""`zscir-infer serve`'s API in process (httpx on the ASGI app): results equal the CLI's, batched equals
unbatched under 64 concurrent requests, the queue limit answers 503, reload under load loses nothing,
every bad input gets its 4xx, embeddings equal the runtime's, and added images are searchable."""

import asyncio
import base64
import io
import json
import re
import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

pytest.importorskip("fastapi", reason="the [serve] extra is not installed")
import httpx  # noqa: E402

from tests.fixtures.gallery import bomb_png, write_image  # noqa: E402
from zscir_infer import Runtime  # noqa: E402
from zscir_infer.cli import app as cli_app  # noqa: E402
from zscir_infer.gallery import Gallery  # noqa: E402
from zscir_infer.serve import ServeConfig, create_app  # noqa: E402

N_IMAGES = 24
SCORE_TOL = 1e-6
TOKEN = "t0ken-for-the-serve-tests-0123456789"
METHODS = ["phi", "slerp", "image", "text", "average", "sum"]
TEXTS = ["as a sketch", "make it red", "with a dog", "on a beach at night", "smaller", "two of them"]
runner = CliRunner()


@pytest.fixture(scope="module")
def served(tmp_path_factory, tiny_bundle):
    """A folder of images indexed by `zscir-infer index` with the tiny LinCIR bundle."""
    root = tmp_path_factory.mktemp("serve")
    images = root / "images"
    for i in range(N_IMAGES):
        write_image(images / f"img{i:02d}.png", i, size=(40 + i, 36 + (i % 5)))
    gallery = root / "gallery"
    result = runner.invoke(cli_app, ["index", str(images), "--bundle", str(tiny_bundle), "--out", str(gallery)])
    assert result.exit_code == 0, result.output
    return {"root": root, "images": images, "gallery": gallery, "bundle": tiny_bundle,
            "names": sorted(p.name for p in images.iterdir())}


def make_app(served, **options):
    return create_app(ServeConfig(bundle=served["bundle"], gallery=served["gallery"], **options))


def client(app):
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://zscir.test", timeout=60)


def run(coro):
    return asyncio.run(coro)


async def search(c, **fields):
    files = {}
    if "image_bytes" in fields:
        files["image"] = ("ref.png", fields.pop("image_bytes"), "image/png")
    data = {k: str(v).lower() if isinstance(v, bool) else str(v) for k, v in fields.items()}
    return await c.post("/v1/search", data=data, files=files or None)


def cli_results(served, reference, text, *options):
    result = runner.invoke(cli_app, ["query", reference, text, "--bundle", str(served["bundle"]), "--gallery",
                                     str(served["gallery"]), "--json", *options])
    assert result.exit_code == 0, result.output
    [out] = [json.loads(line) for line in result.stdout.splitlines()]
    return [(h["name"], h["score"]) for h in out["results"]]


def assert_same(got, expected):
    assert [n for n, _ in got] == [n for n, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], atol=SCORE_TOL, rtol=0)


@pytest.fixture(scope="module")
def app(served):
    return make_app(served, max_batch=32, max_wait_ms=5, token=TOKEN, examples=None)


@pytest.mark.parametrize("method", METHODS)
def test_search_by_name_equals_the_cli(served, app, method):
    name = served["names"][5]

    async def go():
        async with client(app) as c:
            return await search(c, reference=name, text="as a sketch", k=6, method=method, exclude_ref=True)

    response = run(go())
    assert response.status_code == 200, response.text
    body = response.json()
    got = [(h["name"], h["score"]) for h in body["results"]]
    assert_same(got, cli_results(served, name, "as a sketch", "-k", "6", "--method", method, "--exclude-ref"))
    assert name not in [n for n, _ in got]
    assert all(h["url"] == f"/v1/gallery/images/{h['name']}" for h in body["results"])


def test_search_by_upload_equals_the_cli_on_that_file(served, app):
    path = served["images"] / served["names"][7]

    async def go():
        async with client(app) as c:
            plain = await search(c, image_bytes=path.read_bytes(), text="make it red", k=5)
            excluded = await search(c, image_bytes=path.read_bytes(), text="make it red", k=5, exclude_ref=True)
            return plain, excluded

    plain, excluded = run(go())
    assert plain.status_code == excluded.status_code == 200, plain.text + excluded.text
    got = [(h["name"], h["score"]) for h in plain.json()["results"]]
    assert_same(got, cli_results(served, str(path), "make it red", "-k", "5"))
    # an upload identical to a gallery image: exclude_ref leaves that image out, as the CLI does for its file
    assert_same([(h["name"], h["score"]) for h in excluded.json()["results"]],
                cli_results(served, str(path), "make it red", "-k", "5", "--exclude-ref"))


def requests_for(served, n):
    rng = np.random.default_rng(3)
    out = []
    for i in range(n):
        out.append({"reference": served["names"][int(rng.integers(N_IMAGES))], "text": TEXTS[i % len(TEXTS)],
                    "k": int(rng.integers(1, 9)), "method": METHODS[i % len(METHODS)], "exclude_ref": bool(i % 2)})
    return out


async def fire(app, payloads):
    async with client(app) as c:
        return await asyncio.gather(*(search(c, **p) for p in payloads))


def batch_sizes(metrics_text: str, stage: str) -> tuple[float, float]:
    total = float(re.search(rf'zscir_batch_size_sum{{stage="{stage}"}} (\S+)', metrics_text).group(1))
    count = float(re.search(rf'zscir_batch_size_count{{stage="{stage}"}} (\S+)', metrics_text).group(1))
    return total, count


def test_64_concurrent_requests_batched_equal_unbatched_and_the_runtime(served):
    payloads = requests_for(served, 64)
    batched, unbatched = make_app(served, max_batch=32, max_wait_ms=20), make_app(served, max_batch=1)
    got_b, got_u = run(fire(batched, payloads)), run(fire(unbatched, payloads))
    rt = Runtime(served["bundle"])
    with Gallery.open(served["gallery"]) as g:
        xb, names = g.features(), [item.name for item in g.all_items()]
    for p, rb, ru in zip(payloads, got_b, got_u, strict=True):
        assert rb.status_code == ru.status_code == 200, rb.text + ru.text
        hb = [(h["name"], h["score"]) for h in rb.json()["results"]]
        assert_same(hb, [(h["name"], h["score"]) for h in ru.json()["results"]])
        # and each equals the runtime encoding this one query alone, searched by brute force
        xq = rt.encode_queries([(served["images"] / p["reference"], p["text"])], method=p["method"])[0]
        scores = xb @ xq
        order = [i for i in np.argsort(-scores, kind="stable") if not (p["exclude_ref"] and names[i] == p["reference"])]
        assert_same(hb, [(names[i], scores[i]) for i in order[: p["k"]]])
    # the batched server really batched: more requests than batches on the image encoder
    async def metrics(app):
        async with client(app) as c:
            return (await c.get("/metrics")).text
    total, count = batch_sizes(run(metrics(batched)), "image_encoder")
    assert total == 64 - sum(p["method"] == "text" for p in payloads) and count < total
    total_u, count_u = batch_sizes(run(metrics(unbatched)), "image_encoder")
    assert total_u == count_u


def test_a_full_queue_answers_503_with_retry_after_and_the_server_lives_on(served):
    app = make_app(served, max_batch=1, max_queue=3)
    payloads = requests_for(served, 40)
    responses = run(fire(app, payloads))
    codes = [r.status_code for r in responses]
    assert set(codes) <= {200, 503} and 503 in codes and 200 in codes
    for r in responses:
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1" and r.json()["error"]["kind"] == "overloaded"

    async def after():
        async with client(app) as c:
            return await c.get("/readyz"), await search(c, **payloads[0])

    ready, again = run(after())
    assert ready.status_code == 200 and again.status_code == 200


def test_reload_under_load_loses_no_request(served, tiny_slerp_bundle, tmp_path):
    other_gallery = tmp_path / "slerp-gallery"
    result = runner.invoke(cli_app, ["index", str(served["images"]), "--bundle", str(tiny_slerp_bundle),
                                     "--out", str(other_gallery)])
    assert result.exit_code == 0, result.output
    app = make_app(served, max_batch=8, max_wait_ms=2, token=TOKEN)
    payloads = [{**p, "method": "image" if p["method"] == "phi" else p["method"]} for p in requests_for(served, 60)]
    old = app.state.service.current

    async def go():
        async with client(app) as c:
            first = [asyncio.create_task(search(c, **p)) for p in payloads[:30]]
            await asyncio.sleep(0)
            reload = await c.post("/admin/reload", json={"bundle": str(tiny_slerp_bundle), "gallery": str(other_gallery)},
                                  headers={"Authorization": f"Bearer {TOKEN}"})
            second = [asyncio.create_task(search(c, **p)) for p in payloads[30:]]
            return reload, await asyncio.gather(*first, *second), await c.get("/readyz")

    reload, responses, ready = run(go())
    assert reload.status_code == 200, reload.text
    assert [r.status_code for r in responses] == [200] * 60, [r.text for r in responses if r.status_code != 200]
    assert ready.json()["bundle_id"] == Runtime(tiny_slerp_bundle).bundle_id != old.runtime.bundle_id
    assert old.retired and old.in_flight == 0 and old.batchers == {}  # closed once its last request left


def test_reload_needs_the_token_and_a_failed_reload_keeps_serving(served, tmp_path):
    app = make_app(served, token=TOKEN)
    open_app = make_app(served)

    async def go():
        async with client(app) as c, client(open_app) as o:
            return (await c.post("/admin/reload", json={}),
                    await c.post("/admin/reload", json={}, headers={"Authorization": "Bearer wrong-token-xxxxxxxx"}),
                    await o.post("/admin/reload", json={}),
                    await c.post("/admin/reload", json={"bundle": str(tmp_path)}, headers={"Authorization": f"Bearer {TOKEN}"}),
                    await search(c, reference=served["names"][0], text="x", k=2))

    missing, wrong, off, broken, after = run(go())
    assert missing.status_code == 401 and wrong.status_code == 403 and off.status_code == 403
    assert broken.status_code == 422 and str(tmp_path) in broken.json()["error"]["message"]
    assert after.status_code == 200


def test_every_bad_input_gets_its_4xx(served, app):
    name = served["names"][0]
    png = (served["images"] / name).read_bytes()

    async def go():
        async with client(app) as c:
            out = {
                "not_an_image": await search(c, image_bytes=b"this is not an image", text="x"),
                "bomb": await search(c, image_bytes=bomb_png(), text="x"),
                "unknown_name": await search(c, reference="no-such-image.png", text="x"),
                "k_zero": await search(c, reference=name, text="x", k=0),
                "k_huge": await search(c, reference=name, text="x", k=100000),
                "k_not_int": await search(c, reference=name, text="x", k="ten"),
                "empty_form": await c.post("/v1/search", data={}),
                "both_references": await search(c, reference=name, image_bytes=png, text="x"),
                "unknown_method": await search(c, reference=name, text="x", method="magic"),
                "alpha_range": await search(c, reference=name, text="x", method="slerp", alpha=1.5),
                "bad_filter": await search(c, reference=name, text="x", filter="size > 3"),
                "bad_template": await search(c, reference=name, text="x", template="no caption field"),
                "too_large": await c.post("/v1/search", data={"reference": name, "text": "x" * (21 << 20)}),
                "embed_none": await c.post("/v1/embeddings", json={}),
                "embed_both": await c.post("/v1/embeddings", json={"texts": ["a"], "images": [{"name": name}]}),
                "embed_empty": await c.post("/v1/embeddings", json={"texts": []}),
                "embed_b64": await c.post("/v1/embeddings", json={"images": [{"base64": "%%%not base64"}]}),
                "embed_json": await c.post("/v1/embeddings", content=b"{not json", headers={"content-type": "application/json"}),
                "add_read_only": await c.post("/v1/gallery/images", files={"images": ("a.png", png, "image/png")},
                                              headers={"Authorization": f"Bearer {TOKEN}"}),
                "traversal": await c.get("/v1/gallery/images/../../../../etc/passwd"),
                "traversal_encoded": await c.get("/v1/gallery/images/..%2F..%2Fetc%2Fpasswd"),
                "unknown_example": await search(c, reference=name, text="x", example="nope"),
            }
            return out

    out = run(go())
    expected = {"not_an_image": 415, "bomb": 413, "unknown_name": 404, "k_zero": 422, "k_huge": 422,
                "k_not_int": 422, "empty_form": 422, "both_references": 422, "unknown_method": 422,
                "alpha_range": 422, "bad_filter": 422, "bad_template": 422, "too_large": 413, "embed_none": 422,
                "embed_both": 422, "embed_empty": 422, "embed_b64": 422, "embed_json": 422, "add_read_only": 409,
                "traversal": 404, "traversal_encoded": 404, "unknown_example": 404}
    assert {k: r.status_code for k, r in out.items()} == expected, {k: r.text[:200] for k, r in out.items()}
    for key, response in out.items():
        error = response.json()["error"]
        assert error["message"] and "Traceback" not in error["message"], key
    assert "no-such-image.png" in out["unknown_name"].json()["error"]["message"]
    assert "size" in out["bad_filter"].json()["error"]["message"]


def test_embeddings_equal_the_runtime(served, app):
    rt = Runtime(served["bundle"])
    paths = [served["images"] / n for n in served["names"][:3]]
    b64 = [base64.b64encode(p.read_bytes()).decode() for p in paths]

    async def go():
        async with client(app) as c:
            return (await c.post("/v1/embeddings", json={"texts": TEXTS[:3]}),
                    await c.post("/v1/embeddings", json={"images": [{"base64": b64[0]}, {"name": served["names"][1]}],
                                                         "encoding": "base64"}),
                    await c.post("/v1/embeddings", json={"queries": [{"image": {"base64": b}, "text": t}
                                                                     for b, t in zip(b64, TEXTS, strict=False)],
                                                         "method": "phi"}))

    texts, images, queries = run(go())
    assert texts.status_code == images.status_code == queries.status_code == 200
    np.testing.assert_allclose(texts.json()["data"], rt.encode_texts(TEXTS[:3]), atol=SCORE_TOL)
    decoded = np.stack([np.frombuffer(base64.b64decode(s), dtype="<f4") for s in images.json()["data"]])
    np.testing.assert_allclose(decoded, rt.encode_images(paths[:2]), atol=SCORE_TOL)
    np.testing.assert_allclose(queries.json()["data"], rt.encode_queries(list(zip(paths, TEXTS[:3], strict=True))),
                               atol=SCORE_TOL)
    assert images.json()["dim"] == rt.embed_dim and texts.json()["kind"] == "text"


def test_gallery_image_endpoint_serves_only_gallery_items(served, app):
    name = served["names"][2]

    async def go():
        async with client(app) as c:
            return await c.get(f"/v1/gallery/images/{name}"), await c.get("/v1/gallery/images?limit=5&offset=2")

    image, listing = run(go())
    assert image.status_code == 200 and image.content == (served["images"] / name).read_bytes()
    assert image.headers["content-type"] == "image/png"
    body = listing.json()
    assert body["total"] == N_IMAGES and [i["name"] for i in body["items"]] == served["names"][2:7]


def test_added_images_are_durable_and_searchable(served, tmp_path):
    gallery = tmp_path / "gallery"
    shutil.copytree(served["gallery"], gallery)
    app = create_app(ServeConfig(bundle=served["bundle"], gallery=gallery, writable=True, token=TOKEN))
    new = [write_image(tmp_path / f"new{i}.png", 1000 + i) for i in range(2)]
    auth = {"Authorization": f"Bearer {TOKEN}"}

    async def go():
        async with client(app) as c:
            files = [("images", (p.name, p.read_bytes(), "image/png")) for p in new]
            unauthorized = await c.post("/v1/gallery/images", files=files)
            added = await c.post("/v1/gallery/images", files=files, headers=auth)
            again = await c.post("/v1/gallery/images", files=files, headers=auth)
            found = await search(c, image_bytes=new[1].read_bytes(), text="", method="image", k=1)
            return unauthorized, added, again, found

    unauthorized, added, again, found = run(go())
    assert unauthorized.status_code == 401
    assert added.status_code == 200, added.text
    body = added.json()
    assert body["durable"] and body["count"] == N_IMAGES + 2
    assert [a["name"] for a in body["added"]] == ["uploads/new0.png", "uploads/new1.png"]
    assert again.status_code == 409 and "uploads/new0.png" in again.json()["error"]["message"]
    top = found.json()["results"][0]
    assert top["name"] == "uploads/new1.png" and top["score"] == pytest.approx(1.0, abs=1e-5)
    app.state.service.close()
    with Gallery.open(gallery) as g:  # what a restarted server (or the CLI) sees
        assert g.count == N_IMAGES + 2 and g.index_is_fresh()
        item = g.lookup(["uploads/new0.png"])["uploads/new0.png"]
        assert open(item.path, "rb").read() == new[0].read_bytes()


def test_metrics_count_requests_errors_and_stages(served):
    app = make_app(served)

    async def go():
        async with client(app) as c:
            await search(c, reference=served["names"][0], text="x", k=3)
            await search(c, reference="missing", text="x")
            return (await c.get("/metrics")).text

    text = run(go())
    assert 'zscir_requests_total{endpoint="/v1/search",status="200"} 1.0' in text
    assert 'zscir_errors_total{endpoint="/v1/search",kind="404"} 1.0' in text
    assert 'zscir_stage_seconds_count{stage="query_encoder"} 1.0' in text
    assert 'zscir_request_seconds_bucket{endpoint="/v1/search",le="+Inf"} 2.0' in text
    assert "zscir_queue_depth" in text


def test_examples_mark_targets_and_the_page_is_served(served, tmp_path):
    examples = tmp_path / "examples.jsonl"
    names = served["names"]
    examples.write_text(json.dumps({"id": "q1", "reference": names[0], "text": "as a sketch",
                                    "targets": [names[3], names[4]]}) + "\n")
    app = make_app(served, examples=examples)

    async def go():
        async with client(app) as c:
            return (await c.get("/"), await c.get("/v1/examples"),
                    await search(c, reference=names[0], text="as a sketch", k=N_IMAGES, example="q1"))

    page, listed, found = run(go())
    assert page.status_code == 200 and "<title>zscir" in page.text
    assert listed.json()[0]["targets"] == [names[3], names[4]]
    marked = {h["name"] for h in found.json()["results"] if h["target"]}
    assert marked == {names[3], names[4]}


def test_image_decoding_matches_the_runtime_for_other_formats(served, app):
    """A JPEG upload with EXIF rotation decodes as the CLI decodes the same file."""
    path = served["root"] / "rotated.jpg"
    im = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 50, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    path.write_bytes(buf.getvalue())

    async def go():
        async with client(app) as c:
            return await search(c, image_bytes=path.read_bytes(), text="as a sketch", k=4)

    response = run(go())
    assert_same([(h["name"], h["score"]) for h in response.json()["results"]],
                cli_results(served, str(path), "as a sketch", "-k", "4"))


def test_a_request_past_its_timeout_gets_504_and_the_server_lives_on(served):
    app = make_app(served, request_timeout_s=0.001, max_wait_ms=200, max_batch=8)

    async def go():
        async with client(app) as c:
            slow = await search(c, reference=served["names"][0], text="x", k=2)
            await asyncio.sleep(0.3)  # the abandoned job's batch runs and finds nobody waiting
            return slow, await c.get("/readyz")

    slow, health = run(go())
    assert slow.status_code == 504 and slow.json()["error"]["kind"] == "timeout"
    assert health.status_code == 200


def test_the_server_on_a_milvus_gallery_answers_as_on_faiss(served, tmp_path):
    """`serve` is unchanged for a gallery in Milvus Lite: the same results as the FAISS gallery's."""
    pytest.importorskip("pymilvus", reason="the [milvus] extra is not installed")
    pytest.importorskip("milvus_lite", reason="the [milvus] extra is not installed")
    gallery = tmp_path / "milvus-gallery"
    result = runner.invoke(cli_app, ["index", str(served["images"]), "--bundle", str(served["bundle"]), "--out",
                                     str(gallery), "--store", "milvus"])
    assert result.exit_code == 0, result.output
    milvus_app = create_app(ServeConfig(bundle=served["bundle"], gallery=gallery))
    payloads = [{**p, "filter": 'name like "img1%"'} if i % 3 == 0 else p
                for i, p in enumerate(requests_for(served, 12))]
    try:
        on_milvus, on_faiss = run(fire(milvus_app, payloads)), run(fire(make_app(served), payloads))
    finally:
        milvus_app.state.service.close()
    for rm, rf in zip(on_milvus, on_faiss, strict=True):
        assert rm.status_code == rf.status_code == 200, rm.text + rf.text
        got = [(h["name"], h["score"]) for h in rm.json()["results"]]
        np.testing.assert_allclose([s for _, s in got], [h["score"] for h in rf.json()["results"]], atol=1e-5)
        assert [n for n, _ in got] == [h["name"] for h in rf.json()["results"]]
