"""Reading a bundle: `manifest.json`, validated, and the files it names, each checked against its sha256.

A bundle is the runtime's only input (DESIGN §3). Loading it:
1. parses `manifest.json` and refuses anything that is not a zscir bundle, or a format_version newer
   than this runtime reads (an older runtime must not guess at a newer layout);
2. validates the manifest against `manifest.schema.json` (shipped inside this package);
3. checks that every file the manifest names exists inside the bundle directory;
4. verifies each file's sha256 the first time it is used (a ViT-L bundle holds gigabytes, and a query
   needs two of its graphs), or all at once with `Bundle.verify_all()`. A mismatch names the file and
   says what to do: re-export the bundle, or download it again.

Hashing runs at about 1 GB/s here, seconds per query for a large bundle, so a match is remembered in
`$ZSCIR_CACHE_DIR/verified-files.json` (default ~/.cache/zscir) with the file's device, inode, size,
mtime and ctime: any write to the file changes its ctime, which no user can set back, so a remembered
match is only reused for the very same, untouched file. As in git's "racy clean" rule, a file changed
in the last RACY_SECONDS is not remembered (timestamps tick coarsely: a write right after the hash
could leave them equal). `verify_all(rehash=True)` ignores what is remembered.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import jsonschema

from zscir_infer.atomic import atomic_write_json
from zscir_infer.contract import (
    BUNDLE_FORMAT as FORMAT,
)
from zscir_infer.contract import (
    BUNDLE_FORMAT_VERSION as FORMAT_VERSION,
)
from zscir_infer.contract import (
    CAUSAL_KEY,
    ENCODER_METHODS,
    IMAGE_ENCODER,
    MANIFEST,
    MANIFEST_SCHEMA,
    PHI,
    PRECISIONS,
    QUERY_ENCODER,
    SLERP,
    TEXT_ENCODER,
    TEXT_TOWER_KEY,
    PreprocessConfig,
    manifest_schema_path,
    sha256_file,
)
from zscir_infer.errors import ZscirError

NO_PHI = ": it composes queries without phi (use method sum, slerp, image, text or average)"
REMEDY = "re-export the bundle with `zscir-export`, or download it again"
CACHE_ENV = "ZSCIR_CACHE_DIR"
VERIFIED_FILES = "verified-files.json"
RACY_SECONDS = 2.0
CTIME = 4  # index of st_ctime_ns in a file state


class BundleError(ZscirError, ValueError):
    """A bundle cannot be used; the message names the file or field and what to do."""


def cache_root() -> Path:
    """zscir's cache folder: $ZSCIR_CACHE_DIR, else ~/.cache/zscir."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "zscir")


def _file_state(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


class VerifiedFiles:
    """sha256 matches remembered across processes, valid only for the same untouched file (see module doc)."""

    def __init__(self, path: Path | None = None):
        self.path = path or cache_root() / VERIFIED_FILES

    def _read(self) -> dict:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent or damaged: nothing is remembered
            return {}

    def known(self, path: Path, sha256: str) -> bool:
        return self._read().get(str(path.resolve())) == {"sha256": sha256, "state": _file_state(path)}

    def remember(self, path: Path, sha256: str, state: list[int]) -> None:
        """Remember a match hashed from a file in `state` (taken before hashing), unless it changed since
        or too recently."""
        if _file_state(path) != state or time.time_ns() - state[CTIME] < RACY_SECONDS * 1e9:
            return
        entries = self._read()
        entries[str(path.resolve())] = {"sha256": sha256, "state": state}
        try:
            atomic_write_json(self.path, entries)
        except OSError:  # a read-only home: verification still works, only slower next time
            pass


@dataclass(frozen=True)
class BundleFile:
    """One file the manifest names: where it is and what its sha256 must be."""

    key: str  # where the manifest names it, e.g. "graphs.image_encoder.fp32"
    path: Path
    sha256: str


@dataclass(frozen=True)
class GraphSpec:
    """One ONNX graph of the bundle at one precision (a `graphs.<name>.<precision>` entry)."""

    name: str
    precision: str
    file: BundleFile
    inputs: tuple[dict, ...]  # {"name", "dtype", "shape"}; shapes use "batch" for the dynamic axis
    outputs: tuple[dict, ...]
    external_data: tuple[BundleFile, ...] = ()  # weights beside a graph above 2 GiB
    ort_disabled_optimizers: tuple[str, ...] = ()  # ONNX Runtime optimizers this graph must run without


@dataclass(frozen=True)
class EngineSpec:
    """A native TensorRT engine built from one graph (an `engines[i]` entry)."""

    graph: str
    precision: str
    file: BundleFile
    tensorrt_version: str
    compute_capability: str
    profiles: tuple[dict, ...]


def _load_schema() -> dict:
    try:
        text = manifest_schema_path().read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise BundleError(
            f"zscir_infer/{MANIFEST_SCHEMA} is missing from this installation: reinstall zscir."
        ) from exc
    return json.loads(text)


def _read_manifest(path: Path) -> dict:
    manifest_path = path / MANIFEST
    if not path.is_dir():
        raise BundleError(f"Bundle {path} is not a directory: pass the folder that holds {MANIFEST}.")
    if not manifest_path.is_file():
        raise BundleError(f"{path} has no {MANIFEST}: it is not a zscir bundle (export one with `zscir-export`).")
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"{manifest_path} is not valid JSON ({exc}); {REMEDY}.") from exc
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise BundleError(f"{manifest_path} has format {found!r}, not {FORMAT!r}: it is not a zscir bundle.")
    version = manifest.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        raise BundleError(f"{manifest_path}: format_version {version!r} is not an integer; {REMEDY}.")
    if version > FORMAT_VERSION:
        raise BundleError(
            f"{manifest_path} has format_version {version}, newer than this zscir reads (up to {FORMAT_VERSION}): "
            "upgrade zscir (`pip install -U zscir`), or export the bundle with the zscir version you run."
        )
    return manifest


def _validate(manifest: dict, manifest_path: Path) -> None:
    validator = jsonschema.Draft202012Validator(_load_schema())
    errors = sorted(validator.iter_errors(manifest), key=lambda e: list(e.absolute_path))
    if errors:
        lines = [f"  {'.'.join(map(str, e.absolute_path)) or '(top level)'}: {e.message}" for e in errors[:10]]
        more = f"\n  ... and {len(errors) - 10} more" if len(errors) > 10 else ""
        raise BundleError(
            f"{manifest_path} does not match the bundle schema ({len(errors)} problem(s)):\n"
            + "\n".join(lines) + more + f"\n{REMEDY.capitalize()}."
        )


class Bundle:
    """A loaded bundle directory: the manifest's fields, its graphs and engines, verified files."""

    def __init__(self, path: str | os.PathLike, manifest: dict, verify: bool = True):
        self.path = Path(path)
        self.manifest = manifest
        self.verify = verify
        self._verified: set[Path] = set()
        self._lock = threading.Lock()
        self.tokenizer_file = self._file("tokenizer", manifest["tokenizer"])
        self.graphs = {
            (name, precision): self._graph(name, precision, g)
            for name, variants in manifest["graphs"].items()
            for precision, g in variants.items()
        }
        self.engines = tuple(
            EngineSpec(e["graph"], e["precision"], self._file(f"engines[{i}]", e), str(e.get("tensorrt_version", "")),
                       str(e.get("compute_capability", "")), tuple(e.get("profiles", ())))
            for i, e in enumerate(manifest.get("engines") or ())
        )
        self.preprocess = PreprocessConfig.from_dict(manifest["preprocess"])
        for f in self.files():
            if not f.path.is_file():
                raise BundleError(
                    f"Bundle file {f.path} (manifest {f.key}) is missing: the bundle is incomplete; {REMEDY}."
                )

    def _graph(self, name: str, precision: str, g: dict) -> GraphSpec:
        key = f"graphs.{name}.{precision}"
        external = tuple(self._file(f"{key}.external_data[{i}]", e) for i, e in enumerate(g.get("external_data", ())))
        disabled = tuple(g.get("onnxruntime", {}).get("disabled_optimizers", ()))
        return GraphSpec(name, precision, self._file(key, g), tuple(g["inputs"]), tuple(g["outputs"]), external,
                         disabled)

    def _file(self, key: str, entry: dict) -> BundleFile:
        relative = PurePosixPath(entry["file"])
        if relative.is_absolute() or ".." in relative.parts:
            raise BundleError(
                f"{self.path / MANIFEST}: {key}.file {entry['file']!r} points outside the bundle; "
                f"a bundle names its files relative to its own folder. {REMEDY.capitalize()}."
            )
        return BundleFile(key, self.path / relative, entry["sha256"].lower())

    # --- the manifest's fields -------------------------------------------------------------------------
    @property
    def method(self) -> str:
        return self.manifest["method"]

    @property
    def embed_dim(self) -> int:
        return int(self.manifest["embed_dim"])

    @property
    def context_length(self) -> int:
        return int(self.manifest["tokenizer"].get("context_length", self.manifest["context_length"]))

    @property
    def text_causal(self) -> bool:
        """Whether the text tower is causal with EOT pooling (manifest `text.causal`; absent: False), so the
        text and query graphs whose token_ids have the sequence axis may be fed ids cut after the last EOT."""
        return bool((self.manifest.get(TEXT_TOWER_KEY) or {}).get(CAUSAL_KEY, False))

    @property
    def placeholder(self) -> str | None:
        placeholder = self.manifest.get("placeholder")
        return placeholder["text"] if placeholder else None

    @property
    def placeholder_id(self) -> int | None:
        placeholder = self.manifest.get("placeholder")
        return int(placeholder["id"]) if placeholder else None

    @property
    def templates(self) -> dict[str, str]:
        return dict(self.manifest.get("templates") or {})

    @property
    def slerp_alpha(self) -> float:
        return float(self.manifest["slerp_alpha"])

    @property
    def has_phi(self) -> bool:
        return any(name == QUERY_ENCODER for name, _ in self.graphs)

    @property
    def default_method(self) -> str:
        """What a query runs unless told otherwise: phi when the bundle has a query encoder, else the
        bundle's method when it is an encoder-only one (sum: BGE-VL-CLIP's), else slerp."""
        if self.has_phi:
            return PHI
        return self.method if self.method in ENCODER_METHODS else SLERP

    def check_raw_features(self) -> None:
        """Method `sum` adds raw features: refuse a bundle whose image or text graph says it normalizes its
        output (manifest `normalized_output`). The runtime and the Triton ensemble writer both ask here."""
        for graph in (IMAGE_ENCODER, TEXT_ENCODER):
            normalized = [p for p, entry in self.manifest["graphs"].get(graph, {}).items()
                          if entry.get("normalized_output")]
            if normalized:
                raise BundleError(
                    f"Bundle {self.path}: its {graph} ({', '.join(normalized)}) outputs normalized features, "
                    "but method 'sum' adds the raw (unnormalized) image and text features; re-export the bundle "
                    "with this zscir, or use method 'average'.")

    @property
    def bundle_id(self) -> str:
        """Identity of the bundle's models: sha256 over every graph's and the tokenizer's sha256."""
        return _digest({
            "graphs": {f"{n}.{p}": g.file.sha256 for (n, p), g in sorted(self.graphs.items())},
            "tokenizer": self.tokenizer_file.sha256,
        })

    @property
    def image_space_id(self) -> str:
        """Identity of the image feature space: the fp32 image encoder and its preprocessing.

        Two bundles with the same value give the same gallery features (e.g. a retrained phi on the same
        backbone), so a gallery can be kept across them.
        """
        return _digest({
            "image_encoder": self.graph(IMAGE_ENCODER, "fp32").file.sha256,
            "preprocess": self.preprocess.to_dict(),
        })

    def precisions(self, graph: str) -> list[str]:
        return [p for p in PRECISIONS if (graph, p) in self.graphs]

    def graph(self, name: str, precision: str = "fp32") -> GraphSpec:
        if (name, precision) not in self.graphs:
            if not self.precisions(name):
                raise BundleError(f"Bundle {self.path} (method {self.method}) has no {name} graph"
                                  + (NO_PHI if name == QUERY_ENCODER else f"; {REMEDY}."))
            raise BundleError(
                f"Bundle {self.path} has no {precision} {name} (it has {self.precisions(name)}): choose one of "
                f"those precisions, or export the bundle with {precision}."
            )
        return self.graphs[(name, precision)]

    def engines_for(self, graph: str, precision: str) -> list[EngineSpec]:
        return [e for e in self.engines if e.graph == graph and e.precision == precision]

    # --- files and their checksums ---------------------------------------------------------------------
    def files(self) -> list[BundleFile]:
        graph_files = [f for g in self.graphs.values() for f in (g.file, *g.external_data)]
        return [self.tokenizer_file, *graph_files, *(e.file for e in self.engines)]

    def verified(self, f: BundleFile, rehash: bool = False) -> Path:
        """The file's path, once its sha256 matched the manifest (hashed once per process, and not again
        while the file stays untouched unless rehash)."""
        if not self.verify:
            return f.path
        with self._lock:
            if rehash or f.path not in self._verified:
                remembered = VerifiedFiles()
                if rehash or not remembered.known(f.path, f.sha256):
                    state = _file_state(f.path)
                    actual = sha256_file(f.path)
                    if actual != f.sha256:
                        raise BundleError(
                            f"Bundle file {f.path} (manifest {f.key}) is corrupt or was changed: its sha256 is "
                            f"{actual}, the manifest records {f.sha256}. Do not edit bundle files; {REMEDY}."
                        )
                    remembered.remember(f.path, actual, state)
                self._verified.add(f.path)
        return f.path

    def verify_all(self, rehash: bool = False) -> None:
        for f in self.files():
            self.verified(f, rehash)

    def summary(self) -> dict:
        """What `zscir-infer bundle-info` prints: identity, model, prompts, preprocessing, files."""
        m = self.manifest
        return {
            "path": str(self.path),
            "format_version": m["format_version"],
            "zscir_version": m.get("zscir_version"),
            "created": m.get("created"),
            "method": self.method,
            "backbone": {k: m["backbone"].get(k) for k in ("name", "pretrained")},
            "embed_dim": self.embed_dim,
            "width": m.get("width"),
            "context_length": self.context_length,
            "placeholder": m.get("placeholder"),
            "templates": self.templates,
            "slerp_alpha": self.slerp_alpha,
            "preprocess": self.preprocess.to_dict(),
            "resize": (m.get("resize") or {}).get("algorithm"),
            "composition": {k: v for k, v in (m.get("composition") or {}).items() if k in ("norm_eps", "slerp")} or None,
            "graphs": {f"{n}.{p}": {"file": str(g.file.path.relative_to(self.path)),
                                     "bytes": g.file.path.stat().st_size} for (n, p), g in self.graphs.items()},
            "engines": [{"graph": e.graph, "precision": e.precision, "file": str(e.file.path.relative_to(self.path)),
                         "tensorrt_version": e.tensorrt_version, "compute_capability": e.compute_capability}
                        for e in self.engines],
            "bundle_id": self.bundle_id,
        }


def _digest(obj: dict) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()


def load_bundle(path: str | os.PathLike, *, verify: bool = True) -> Bundle:
    """Load and validate a bundle directory; with verify, every file is sha256-checked before first use."""
    path = Path(path)
    manifest = _read_manifest(path)
    _validate(manifest, path / MANIFEST)
    return Bundle(path, manifest, verify=verify)
