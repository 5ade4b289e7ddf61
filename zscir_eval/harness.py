"""Run a benchmark with a `QueryEncoder` (the runtime, or the PyTorch reference passed in).

The gallery is encoded once and cached on disk; queries are encoded in batches; rankings come from
exact FAISS search and the metrics from the benchmark modules, which can also be called directly with
precomputed features or rankings. `run_benchmark` reads a split in its official layout; `score_split`
scores a split already read (e.g. the shapes world's test split with its ground truth, `world.py`);
`write_result` writes the metrics and the submission files.
"""

# ruff: noqa: E741 -- `I` is FAISS's name for the [Q, K] ranking of gallery indices

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from zscir_eval import circo, cirr, fashioniq, genecis, imagenet_r
from zscir_eval.encoder import QueryEncoder
from zscir_eval.images import ImageRef, describe_missing, find_missing
from zscir_eval.splits import DatasetError
from zscir_eval.templates import (
    check_template,
    default_template,
    fashioniq_clean,
    fashioniq_orders,
    phi_template,
    plain_text,
    prompt_style,
)
from zscir_infer.atomic import atomic_path, atomic_write_json
from zscir_infer.contract import IMAGE, METHODS, PHI
from zscir_infer.errors import UsageError, ZscirError
from zscir_infer.gallery import Gallery

BENCHMARKS = ("cirr", "circo", "fashioniq", "genecis", "imagenet-r")
READERS = {
    "cirr": cirr.read_cirr,
    "circo": circo.read_circo,
    "fashioniq": fashioniq.read_fashioniq,
    "genecis": genecis.read_genecis,
    "imagenet-r": imagenet_r.read_imagenet_r,
}
DEFAULT_BATCH_SIZE = 32
DECODE_THREADS = 4  # Pillow decodes outside the GIL


class MissingImagesError(ZscirError, FileNotFoundError):
    """Image files the split needs are absent; the message lists them and the way out."""


@dataclass
class EvalResult:
    benchmark: str
    split: str
    method: str
    template: str
    encoder: str  # the encoder's identity (bundle id, or backbone weights and phi checkpoint hashes)
    num_queries: int
    metrics: dict[str, float]
    excluded: dict[str, int] = field(default_factory=dict)  # queries / gallery items / files skipped
    submissions: dict[str, dict] = field(default_factory=dict, repr=False)  # test split files


def store_name(ref: ImageRef) -> str:
    """The gallery-store name of an image: its file, crop, size and mtime (a changed file is a new item)."""
    stat = ref.path.stat()
    return f"{ref.path.resolve()}#{ref.box or ''}#{stat.st_size}:{stat.st_mtime_ns}"


def cached_gallery_features(
    encoded_batches: Callable[[Sequence[ImageRef]], Iterator[np.ndarray]],
    refs: Sequence[ImageRef],
    image_space: str,
    embed_dim: int,
    cache_dir: Path | None,
) -> np.ndarray:
    """Gallery features [N, D] from the gallery store under `cache_dir`, encoding only what it lacks.

    One store per image space (the encoder's image tower and preprocessing); each encoded batch is
    committed on its own, so an interrupted run keeps what it encoded. encoded_batches(refs) yields
    features [B, D] batch by batch, in order.
    """
    if cache_dir is None:
        return np.concatenate(list(encoded_batches(refs)))
    root = cache_dir / f"gallery-{hashlib.sha256(image_space.encode()).hexdigest()[:20]}"
    names = [store_name(ref) for ref in refs]
    if root.exists():
        store = Gallery.open(root, bundle_id=image_space, writable=True)
    else:
        store = Gallery.create(root, bundle_id=image_space, embed_dim=embed_dim, bundle=image_space)
    with store:
        stored = store.lookup(names)
        todo = {n: ref for n, ref in zip(names, refs, strict=True) if n not in stored}  # each name once
        start = 0
        for features in encoded_batches(list(todo.values())):
            batch = list(todo.items())[start : start + len(features)]
            store.add([n for n, _ in batch], [ref.path for _, ref in batch], features)
            start += len(features)
        ids = store.lookup(names)
        return np.asarray(store.features()[[ids[n].id for n in names]])


class Harness:
    """Encodes galleries (cached) and composed queries (batched) for the benchmark runners.

    image_space: identity of the encoder's image features (image tower, weights, preprocessing,
    precision); the gallery cache is keyed by it. encoder_id: identity of the whole encoder (phi
    included), recorded with the results; defaults to image_space.
    """

    def __init__(
        self,
        encoder: QueryEncoder,
        image_space: str,
        cache_dir: str | Path | None = None,
        batch_size: int = DEFAULT_BATCH_SIZE,
        console: Console | None = None,
        encoder_id: str | None = None,
    ):
        self.encoder = encoder
        self.image_space = image_space
        self.encoder_id = encoder_id or image_space
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.batch_size = batch_size
        self.console = console or Console(stderr=True)

    def _image_batches(self, refs: Sequence[ImageRef], description: str):
        """(start, decoded images) per batch of refs, with a progress bar."""
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        with (
            Progress(*columns, console=self.console, transient=True) as progress,
            ThreadPoolExecutor(DECODE_THREADS) as pool,
        ):
            task = progress.add_task(description, total=len(refs))
            for start in range(0, len(refs), self.batch_size):
                images = list(pool.map(ImageRef.load, refs[start : start + self.batch_size]))
                yield start, images
                progress.advance(task, len(images))

    def _encoded_batches(self, refs: Sequence[ImageRef]) -> Iterator[np.ndarray]:
        for _, images in self._image_batches(refs, "gallery"):
            yield np.asarray(self.encoder.encode_images(images), dtype=np.float32)  # [B, D]

    def gallery_features(self, refs: Sequence[ImageRef]) -> np.ndarray:
        """Normalized features [N, D] of the gallery images, each encoded once per image space."""
        return cached_gallery_features(
            self._encoded_batches, refs, self.image_space, self.encoder.embed_dim, self.cache_dir
        )

    def query_features(
        self,
        refs: Sequence[ImageRef],
        captions: Sequence[str],
        template: str,
        method: str,
        domain: str | None = None,
    ) -> np.ndarray:
        """Normalized composed-query features [Q, D] for reference images and captions."""
        if method == PHI:
            kwargs = {"template": phi_template(template, self.encoder.placeholder, domain)}
            texts = list(captions)
        else:
            kwargs = {}
            texts = [plain_text(template, caption=c, domain=domain) for c in captions]
        parts = [
            self.encoder.encode_queries(
                list(zip(images, texts[start : start + len(images)], strict=True)), method=method, **kwargs
            )
            for start, images in self._image_batches(refs, f"queries ({method})")
        ]
        return np.concatenate(parts).astype(np.float32)


def normalize(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def _run_cirr(h: Harness, data: cirr.CirrSplit, method: str, template: str, style: str):
    xb = h.gallery_features(data.gallery)
    xq = h.query_features(data.references(), [q.caption for q in data.queries], template, method)
    I, I_subset = cirr.cirr_rankings(data, xq, xb)
    if data.has_targets:
        return cirr.cirr_metrics(data, I, I_subset), {}
    return {}, cirr.cirr_submissions(data, I, I_subset)


def _run_circo(h: Harness, data: circo.CircoSplit, method: str, template: str, style: str):
    xb = h.gallery_features(data.gallery)
    xq = h.query_features(data.references(), [q.caption for q in data.queries], template, method)
    I = circo.circo_rankings(data, xq, xb)
    if data.has_targets:
        return circo.circo_metrics(data, I), {}
    return {}, {"submission": circo.circo_submission(data, I)}


def fashioniq_query_features(
    h: Harness, category: fashioniq.FashionIQCategory, method: str, template: str, style: str
) -> np.ndarray:
    """[Q, D]: one normalized feature per caption order, averaged and renormalized (LinCIR's
    normalize((f(c1 and c2) + f(c2 and c1)) / 2); a single order is just f(order)). Captions are
    cleaned or raw as the method's own code has them (`fashioniq_clean`)."""
    refs = category.references()
    clean = fashioniq_clean(method, style)
    features = [
        h.query_features(
            refs, [fashioniq.joined_captions(q, order, clean) for q in category.queries], template, method
        )
        for order in fashioniq_orders(method, style)
    ]
    return normalize(np.mean(features, axis=0))


def _run_fashioniq(h: Harness, data: fashioniq.FashionIQSplit, method: str, template: str, style: str):
    per_category = {}
    for category in data.categories:
        xb = h.gallery_features(category.gallery)
        xq = fashioniq_query_features(h, category, method, template, style)
        I = fashioniq.category_rankings(category, xq, xb)
        per_category[category.name] = fashioniq.category_metrics(category, I)
    return fashioniq.fashioniq_metrics(per_category), {}


def _run_genecis(h: Harness, data: genecis.GenecisSplit, method: str, template: str, style: str):
    per_task = {}
    for task in data.tasks:
        xb = h.gallery_features(task.gallery)
        xq = h.query_features(task.references(), [q.condition for q in task.queries], template, method)
        per_task[task.name] = genecis.task_metrics(task, genecis.task_rankings(task, xq, xb))
    return genecis.genecis_metrics(per_task), {}


def _run_imagenet_r(h: Harness, data: imagenet_r.ImagenetRSplit, method: str, template: str, style: str):
    xb = h.gallery_features(data.gallery)
    per_domain, xq = {}, None
    for domain in imagenet_r.DOMAINS:
        if xq is None or method != IMAGE:  # the image-only query is the same for every domain
            xq = h.query_features(data.queries, [""] * len(data.queries), template, method, domain=domain)
        per_domain[domain] = imagenet_r.domain_metrics(data, domain, imagenet_r.domain_rankings(data, xq, xb))
    return imagenet_r.imagenet_r_metrics(per_domain), {}


RUNNERS = {
    "cirr": _run_cirr,
    "circo": _run_circo,
    "fashioniq": _run_fashioniq,
    "genecis": _run_genecis,
    "imagenet-r": _run_imagenet_r,
}


def exclude_missing(data, root: Path, skip_missing: bool, console: Console):
    """The split without missing images (with --skip-missing), or MissingImagesError listing them."""
    refs = data.image_refs()
    missing = find_missing(refs)
    if not missing:
        return data, {}
    report = describe_missing(missing, len({ref.path for ref in refs}), root)
    if not skip_missing:
        raise MissingImagesError(
            f"{report}\nDownload them, or pass --skip-missing to leave out the queries whose reference or "
            "target is missing and the missing gallery images."
        )
    data, excluded = data.without({ref.key for ref in missing})
    excluded["missing_files"] = len({ref.path for ref in missing})
    console.print(
        f"[yellow]{escape(report)}\n--skip-missing: left out {excluded['queries']} queries and "
        f"{excluded['gallery']} gallery images.[/yellow]"
    )
    return data, excluded


def run_benchmark(
    harness: Harness,
    benchmark: str,
    root: str | Path,
    *,
    split: str = "val",
    method: str = PHI,
    template: str | None = None,
    skip_missing: bool = False,
) -> EvalResult:
    """Read the split in its official layout, encode, rank and score it (or build its submission)."""
    if benchmark not in READERS:
        raise UsageError(f"Unknown benchmark '{benchmark}': choose from {BENCHMARKS}.")
    root = Path(root)
    data = READERS[benchmark](root, split)
    data, excluded = exclude_missing(data, root, skip_missing, harness.console)
    empty = [part for part, n in data.query_counts.items() if n == 0]
    if empty:
        raise DatasetError(f"{benchmark} {split} under {root}: no query left to evaluate in {', '.join(empty)}.")
    return score_split(harness, benchmark, data, method=method, template=template, excluded=excluded)


def score_split(
    harness: Harness,
    benchmark: str,
    data,
    *,
    method: str = PHI,
    template: str | None = None,
    excluded: dict[str, int] | None = None,
) -> EvalResult:
    """Encode, rank and score a split already read, or build its submission.

    data: what `READERS[benchmark]` returns, every image present; template: None for the paper's;
    excluded: what was left out of the split, recorded with the result.
    """
    if benchmark not in RUNNERS:
        raise UsageError(f"Unknown benchmark '{benchmark}': choose from {BENCHMARKS}.")
    if method not in METHODS:
        raise UsageError(f"Unknown method '{method}': choose from {METHODS}.")
    placeholder = harness.encoder.placeholder
    if method == PHI and placeholder is None:
        others = ", ".join(m for m in METHODS if m != PHI)
        raise UsageError(
            f"Method '{PHI}' needs an encoder with a phi (a phi bundle or checkpoint); this one has none: "
            f"use one of {others}."
        )
    style = prompt_style(harness.encoder)
    template = template or default_template(benchmark, method, style)
    check_template(template, benchmark, method, placeholder)
    metrics, submissions = RUNNERS[benchmark](harness, data, method, template, style)
    return EvalResult(
        benchmark,
        data.split,
        method,
        template,
        harness.encoder_id,
        sum(data.query_counts.values()),
        metrics,
        excluded or {},
        submissions,
    )


def write_result(result: EvalResult, out: str | Path) -> list[Path]:
    """`{benchmark}-{split}-{method}.json` with the metrics, plus one file per test submission."""
    out = Path(out)
    stem = f"{result.benchmark}-{result.split}-{result.method}"
    summary = {k: v for k, v in asdict(result).items() if k != "submissions"}
    paths = [out / f"{stem}.json"]
    atomic_write_json(paths[0], summary)
    for name, submission in result.submissions.items():
        path = out / f"{stem}-{name}.json"
        with atomic_path(path) as tmp:
            tmp.write_text(json.dumps(submission, sort_keys=True))
        paths.append(path)
    return paths
