"""Composed queries against a gallery: what `zscir-infer query` runs, usable from Python too.

A request is a reference image (a file, or the name of a gallery image such as CIRR's "dev-190-0-img0"),
a modification text, and optionally the targets (gallery names or files) that make a result correct.
Batch files are JSON Lines or CSV with the fields `reference`, `text` (or `caption`), and optional
`target` / `targets` (a list in JSONL, ';'-separated in CSV) and `id`; the shapes world's
`queries/{val,test}.jsonl` is such a file.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from zscir_infer.errors import ZscirError
from zscir_infer.gallery import Gallery, file_key
from zscir_infer.runtime import Runtime

RECALL_KS = (1, 5, 10, 50)
QUERY_CHUNK = 1024  # queries encoded, searched and returned at a time: memory stays flat for any batch
CSV_LIST_SEPARATOR = ";"
TEXT_FIELDS = ("text", "caption")


class QueryError(ZscirError, ValueError):
    """A query or batch file cannot be run; the message names the line or file and what to fix."""


@dataclass
class QueryRequest:
    reference: str  # a file path, or a gallery image name
    text: str
    targets: list[str] | None = None  # gallery names or file paths; None: correctness unknown
    id: str | None = None


@dataclass
class QueryHit:
    rank: int
    score: float
    id: int
    name: str
    path: str
    correct: bool | None = None


@dataclass
class QueryResult:
    request: QueryRequest
    reference_path: str
    method: str
    hits: list[QueryHit] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"id": self.request.id, "reference": self.request.reference, "reference_path": self.reference_path,
                "text": self.request.text, "method": self.method, "targets": self.request.targets,
                "results": [asdict(h) for h in self.hits]}


def _request(record: dict, where: str) -> QueryRequest:
    if not isinstance(record, dict):
        raise QueryError(f"{where}: expected an object with 'reference' and 'text', got {type(record).__name__}.")
    text = next((record[f] for f in TEXT_FIELDS if record.get(f) is not None), None)
    if not record.get("reference") or text is None:
        raise QueryError(f"{where}: needs 'reference' (an image file or gallery name) and 'text'; "
                         f"it has {sorted(record)}.")
    targets = record.get("targets", record.get("target"))
    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(CSV_LIST_SEPARATOR) if t.strip()]
    if targets is not None and not (isinstance(targets, list) and all(isinstance(t, str) for t in targets)):
        raise QueryError(f"{where}: 'targets' must be a list of gallery names or paths, got {targets!r}.")
    query_id = record.get("id", record.get("pairid"))
    return QueryRequest(str(record["reference"]), str(text), targets or None,
                        None if query_id is None else str(query_id))


def read_batch(path: str | os.PathLike) -> list[QueryRequest]:
    """Requests from a JSONL (.jsonl/.json lines) or CSV (.csv, with a header row) file."""
    path = Path(path)
    if not path.is_file():
        raise QueryError(f"Batch file {path} does not exist.")
    lines = path.read_text(encoding="utf-8").splitlines()
    if path.suffix.lower() == ".csv":
        rows = list(csv.DictReader(lines))
        return [_request({k: v for k, v in row.items() if v not in (None, "")}, f"{path}:{i + 2}")
                for i, row in enumerate(rows)]
    requests = []
    for i, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise QueryError(f"{path}:{i} is not JSON ({exc.msg}); write one JSON object per line, "
                             "or use a .csv file with a header row.") from exc
        requests.append(_request(record, f"{path}:{i}"))
    if not requests:
        raise QueryError(f"Batch file {path} holds no queries.")
    return requests


def _existing_file(value: str, base_dir: Path | None) -> Path | None:
    for candidate in (Path(value), base_dir / value if base_dir else None):
        if candidate is not None and candidate.is_file():
            return candidate.resolve()
    return None


def resolve_references(requests: Sequence[QueryRequest], gallery: Gallery, base_dir: Path | None = None) -> list[str]:
    """The image file of each request's reference: a path (as given, or relative to base_dir), or a gallery name."""
    files = [_existing_file(r.reference, base_dir) for r in requests]
    by_name = gallery.lookup([r.reference for r, f in zip(requests, files, strict=True) if f is None])
    resolved = []
    for request, found in zip(requests, files, strict=True):
        if found is None and request.reference not in by_name:
            raise QueryError(
                f"Reference {request.reference!r} is neither an image file nor the name of an image in gallery "
                f"{gallery.root}: check the path (relative paths start at the current folder"
                + (f" or {base_dir}" if base_dir else "") + ")."
            )
        resolved.append(str(found) if found is not None else by_name[request.reference].path)
    return resolved


def iter_queries(
    runtime: Runtime,
    gallery: Gallery,
    requests: Sequence[QueryRequest],
    *,
    k: int = 10,
    method: str | None = None,
    template: str | None = None,
    alpha: float | None = None,
    exclude_ref: bool = False,
    filter: str | None = None,
    base_dir: Path | None = None,
    chunk_size: int = QUERY_CHUNK,
) -> Iterator[list[QueryResult]]:
    """`run_queries` a chunk at a time: the results of each chunk_size requests, as soon as they exist.

    Memory stays flat for any number of requests: only one chunk is decoded, encoded and searched at once.
    """
    if k < 1:
        raise QueryError(f"k must be at least 1, got {k}.")
    method = method or runtime.default_method
    for start in range(0, len(requests), chunk_size):
        chunk = requests[start : start + chunk_size]
        references = resolve_references(chunk, gallery, base_dir)
        xq = runtime.encode_queries(list(zip(references, [r.text for r in chunk], strict=True)), method=method,
                                    template=template, alpha=alpha)  # [Q, D]
        exclude = gallery.ids_of_files(references) if exclude_ref else None
        scores, ids, items = gallery.search_items(xq, k, exclude=exclude, filter=filter)
        results = []
        for request, reference, row_scores, row_ids, row_items in zip(chunk, references, scores, ids, items,
                                                                       strict=True):
            result = QueryResult(request, reference, method)
            targets = _target_set(request, base_dir)
            for score, i, item in zip(row_scores, row_ids, row_items, strict=True):
                if item is None:
                    continue
                correct = None if targets is None else (item.name in targets or file_key(item.path) in targets)
                result.hits.append(QueryHit(len(result.hits) + 1, float(score), int(i), item.name, item.path, correct))
            results.append(result)
        yield results


def run_queries(runtime: Runtime, gallery: Gallery, requests: Sequence[QueryRequest], **options) -> list[QueryResult]:
    """Run composed queries against a gallery -> one QueryResult per request, hits ranked best first.

    The options are `iter_queries`': k (10), method (phi, slerp, image, text or average; default the
    bundle's), template (the phi prompt, see `zscir_infer.contract.fill_template`, or a template name of
    the bundle), alpha, exclude_ref (leave each reference image out of its results, CIRR's protocol,
    through the gallery's own exclusion), filter (an expression over the items' name and path, see
    `stores.filters`), base_dir (where relative paths in requests start) and chunk_size (requests encoded
    and searched together). Hits whose request names targets are marked correct or not.
    """
    return [result for chunk in iter_queries(runtime, gallery, requests, **options) for result in chunk]


def _target_set(request: QueryRequest, base_dir: Path | None) -> set | None:
    """Target names, plus the file keys of targets that are files."""
    if request.targets is None:
        return None
    files = (_existing_file(t, base_dir) for t in request.targets)
    return set(request.targets) | {file_key(str(f)) for f in files if f is not None}


class RecallTally:
    """Recall@{1,5,10,50} below k, and @k, over queries seen a chunk at a time (counts only)."""

    def __init__(self, k: int):
        self.ks = [kk for kk in RECALL_KS if kk < k] + [k]
        self.found = np.zeros(len(self.ks), dtype=np.int64)  # queries with a target in the top kk, per kk
        self.judged = 0  # queries with targets

    def add(self, results: Sequence[QueryResult]) -> None:
        for r in results:
            if r.request.targets is not None:
                self.judged += 1
                self.found += [any(h.correct for h in r.hits[:kk]) for kk in self.ks]

    def scores(self) -> dict[str, float] | None:
        """The share of queries with targets that have one in the top kk, per kk; None when none has targets."""
        if not self.judged:
            return None
        return {f"R@{kk}": float(n / self.judged) for kk, n in zip(self.ks, self.found, strict=True)}
