"""`Runtime`: a bundle's encoders behind a batched numpy API, without torch.

    rt = Runtime("zscir-out/bundle")                         # ONNX Runtime on CPU, fp32
    xb = rt.encode_images(["a.jpg", "b.png"])                # [N, D] float32, L2-normalized
    xq = rt.encode_queries([("a.jpg", "as a sketch")])       # phi: pseudo-token in the bundle's template
    xq = rt.encode_queries(pairs, method="slerp", alpha=0.8)  # training-free; also image, text, average
    xq = rt.encode_queries(pairs, method="sum")               # BGE-VL-CLIP: normalize(raw image + raw text)

Every method gives the same numbers as `zscir_train.reference.TorchReference` on the same inputs
(the parity tests hold them to the export's golden outputs): templates are filled by the same rules
as `zscir_train.composed.fill_template`, and slerp / average / sum are the same formulas in numpy float32.
`sum` adds the graphs' raw (unnormalized) features, as BGE-VL's evaluation adds `get_image_features` and
`get_text_features`; a bundle whose manifest says a graph's output is normalized is refused for it.

Images may be paths, bytes, PIL images or uint8 arrays ([H, W], [H, W, 3] or [H, W, 4]); they are
loaded by `zscir_infer.preprocess.load_image`, which applies the EXIF orientation (see there).

Texts longer than the context (77 tokens) are cut keeping the end-of-text token, as open_clip does,
with a `TruncationWarning` naming the text; a phi prompt whose placeholder was cut off (the image token
lost) warns with `PlaceholderLostWarning`: its query is then the text alone.

Sequence-adaptive text graphs: when the manifest says the text tower is causal (`text.causal`) and a
text or query graph's token_ids have the dynamic "sequence" axis, each batch's ids are cut to its longest
end-of-text position + 1, rounded up to a multiple of 8 and capped at the context length
(`zscir_infer.contract.trimmed_sequence_length`): the same features for a fraction of the work. Older
bundles (fixed [batch, 77] ids) run at full length. `Runtime(..., trim_sequence=False)` turns it off.

Thread-safe: graph sessions are created once under a lock, ONNX Runtime sessions run concurrently,
TensorRT engines serialize their own calls; the tokenizer and preprocessing are pure.
"""

from __future__ import annotations

import os
import threading
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
from PIL import Image

from zscir_infer.backends import BACKENDS, BackendError, parse_device
from zscir_infer.bundle import NO_PHI, Bundle, BundleError, load_bundle
from zscir_infer.contract import (
    AVERAGE,
    GRAPH_INPUTS,
    IMAGE,
    IMAGE_ENCODER,
    IMAGE_FEATURES,
    METHODS,
    NORM_EPS,
    PHI,
    PIXELS,
    QUERY_ENCODER,
    SEQUENCE_AXIS,
    SLERP,
    SLERP_PARALLEL_COS,
    SUM,
    TEXT,
    TEXT_ENCODER,
    TOKEN_IDS,
    TemplateError,
    fill_template,
    trimmed_ids,
)
from zscir_infer.errors import InputError
from zscir_infer.preprocess import load_image, preprocess
from zscir_infer.tokenizer import ClipTokenizer

DEFAULT_BATCH_SIZE = 32
SHOWN_CHARS = 60  # of a text named in a warning


class GraphIO(NamedTuple):
    inputs: dict[str, str]  # contract role (PIXELS, IMAGE_FEATURES, TOKEN_IDS) -> the graph's input name
    output: str
    sequence_adaptive: bool  # token ids may be cut after the batch's last EOT


class TruncationWarning(UserWarning):
    """A text was longer than the context and its tail was dropped (the end-of-text token is kept)."""


class PlaceholderLostWarning(UserWarning):
    """A phi prompt lost its placeholder to truncation: the image does not reach the query."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= SHOWN_CHARS else text[:SHOWN_CHARS] + "...")


def normalize(x: np.ndarray) -> np.ndarray:
    """Rows to unit length, as torch.nn.functional.normalize (x / max(|x|, eps)), float32."""
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), np.float32(NORM_EPS))


def slerp(v_img: np.ndarray, v_txt: np.ndarray, alpha: float) -> np.ndarray:
    """Spherical interpolation from image (alpha=0) to text (alpha=1); inputs normalized first, output unit.

    Near-parallel pairs (|cos| > 0.9995, where sin(theta) -> 0) use normalized linear interpolation.
    """
    a, b = normalize(v_img), normalize(v_txt)  # [B, D]
    cos = np.clip((a * b).sum(-1, keepdims=True), -1.0, 1.0)  # [B, 1]
    theta = np.arccos(cos)
    sin = np.sin(theta)
    parallel = np.abs(cos) > SLERP_PARALLEL_COS
    safe_sin = np.where(parallel, np.float32(1.0), sin)
    alpha32 = np.float32(alpha)
    w_img = np.where(parallel, np.float32(1.0) - alpha32, np.sin((np.float32(1.0) - alpha32) * theta) / safe_sin)
    w_txt = np.where(parallel, alpha32, np.sin(alpha32 * theta) / safe_sin)
    return normalize(w_img * a + w_txt * b)


def average(v_img: np.ndarray, v_txt: np.ndarray) -> np.ndarray:
    """The average baseline: mean of the two normalized features, renormalized."""
    return normalize(normalize(v_img) + normalize(v_txt))


def sum_query(v_img: np.ndarray, v_txt: np.ndarray) -> np.ndarray:
    """BGE-VL-CLIP's composed query: the raw image and text features added, then normalized.

    v_img, v_txt must be the unnormalized projected features (the image and text graphs' outputs); two unit
    vectors added would give the `average` baseline instead."""
    return normalize(np.asarray(v_img, dtype=np.float32) + np.asarray(v_txt, dtype=np.float32))


def to_pil(image) -> Image.Image:
    """A path, bytes, PIL image or uint8 array -> an RGB PIL image (EXIF orientation applied)."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (3, 4)):
            raise InputError(
                f"An image array must be uint8 [H, W], [H, W, 3] or [H, W, 4]; got {image.dtype} {image.shape}."
            )
        image = Image.fromarray(image)
    return load_image(image)


class Runtime:
    """Encode images, texts and composed queries with a bundle's graphs (ONNX Runtime or TensorRT)."""

    def __init__(self, bundle: Bundle | str | os.PathLike, backend: str = "ort", device: str = "cpu",
                 precision: str = "fp32", batch_size: int = DEFAULT_BATCH_SIZE, threads: int | None = None,
                 verify: bool = True, trim_sequence: bool = True):
        if backend not in BACKENDS:
            raise BackendError(f"Unknown backend {backend!r}: use one of {BACKENDS}.")
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}.")
        kind, self.device_id = parse_device(device)
        if backend == "trt" and kind != "cuda":
            raise BackendError(f"The trt backend runs TensorRT engines on a GPU: use --device cuda, not {device!r}.")
        if backend == "openvino" and kind != "cpu":
            raise BackendError(f"The openvino backend runs on the CPU: use --device cpu, not {device!r}.")
        self.bundle = bundle if isinstance(bundle, Bundle) else load_bundle(bundle, verify=verify)
        self.backend, self.device, self.precision = backend, device, precision
        self.batch_size, self.threads = batch_size, threads
        self._check_precision()
        self.tokenizer = ClipTokenizer.from_file(self.bundle.verified(self.bundle.tokenizer_file),
                                                 self.bundle.context_length)
        self._check_placeholder()
        self._sessions: dict[str, object] = {}
        self._io: dict[str, GraphIO] = {}
        self.trim_sequence = trim_sequence  # cut the ids after the last EOT where the bundle allows it
        self._lock = threading.Lock()

    # --- what the bundle is ------------------------------------------------------------------------------
    @property
    def embed_dim(self) -> int:
        return self.bundle.embed_dim

    @property
    def placeholder(self) -> str | None:
        return self.bundle.placeholder

    @property
    def default_method(self) -> str:
        return self.bundle.default_method

    @property
    def bundle_id(self) -> str:
        return self.bundle.bundle_id

    @property
    def image_space_id(self) -> str:
        return self.bundle.image_space_id

    def _check_placeholder(self) -> None:
        """The query encoder substitutes phi at the manifest's placeholder id: the tokenizer must produce it."""
        if self.placeholder is None:
            return
        token_id = self.tokenizer.token_id(self.placeholder)
        if token_id != self.bundle.placeholder_id:
            raise BundleError(
                f"Bundle {self.bundle.path}: the tokenizer gives placeholder {self.placeholder!r} id {token_id}, "
                f"the manifest (and its query encoder) expects {self.bundle.placeholder_id}; re-export the bundle."
            )

    def _check_precision(self) -> None:
        """An unknown precision fails here, not at the first call."""
        if self.backend in ("ort", "openvino"):  # both run the bundle's ONNX graphs
            self.bundle.graph(IMAGE_ENCODER, self.precision)
        elif not self.bundle.engines_for(IMAGE_ENCODER, self.precision):
            built = sorted({(e.graph, e.precision) for e in self.bundle.engines})
            raise BackendError(f"Bundle {self.bundle.path} has no {self.precision} TensorRT engines (it has "
                               f"{built or 'none'}): build them on this machine with `zscir-infer engines {self.bundle.path} "
                               f"--precision {self.precision}`, or use --backend ort.")

    # --- graph sessions ----------------------------------------------------------------------------------
    def _session(self, graph: str):
        with self._lock:
            if graph not in self._sessions:
                self._sessions[graph] = self._open(graph)
            return self._sessions[graph]

    def _open(self, graph: str):
        if self.backend in ("ort", "openvino"):
            spec = self.bundle.graph(graph, self.precision)
            for external in spec.external_data:
                self.bundle.verified(external)
            if self.backend == "openvino":
                from zscir_infer.backends.openvino import OpenVinoSession

                return OpenVinoSession(self.bundle.verified(spec.file), self.device, self.threads)
            from zscir_infer.backends.ort import OrtSession

            return OrtSession(self.bundle.verified(spec.file), self.device, self.threads,
                              cache_key=spec.file.sha256[:16], disabled_optimizers=spec.ort_disabled_optimizers)
        from zscir_infer.backends import trt

        engines = self.bundle.engines_for(graph, self.precision)
        if not engines:
            raise BackendError(f"Bundle {self.bundle.path} has no {self.precision} TensorRT engine for {graph}: "
                               f"build them on this machine with `zscir-infer engines {self.bundle.path}`, or use --backend ort.")
        local_trt, local_cc = trt.tensorrt_version(), trt.device_compute_capability(self.device_id)
        engine = trt.pick_engine(engines, local_trt, local_cc)
        trt.check_compatible(engine.file.path, engine.tensorrt_version, engine.compute_capability, local_trt, local_cc)
        return trt.TrtEngine(self.bundle.verified(engine.file), self.device_id)

    def providers_used(self, graphs: Sequence[str] | None = None) -> dict[str, list[str]]:
        """{graph: providers} for the given graphs (default: all in the bundle), opening them if needed."""
        names = graphs or sorted({name for name, _ in self.bundle.graphs})
        return {name: self._session(name).providers_used() for name in names}

    def _graph_io(self, graph: str) -> GraphIO:
        """How to feed `graph`, read once from the manifest: {contract input role: the graph's input name},
        its output name, and whether its ids may be cut after the last EOT.

        The manifest lists a graph's inputs in the contract's order (GRAPH_INPUTS); their names are read
        from it, so a bundle whose exporter named its tensors differently still runs. Ids are cut for a
        causal text tower (manifest `text.causal`) whose token_ids shape has the dynamic sequence axis.
        """
        if graph not in self._io:
            precision = self.precision if (graph, self.precision) in self.bundle.graphs else "fp32"
            spec = self.bundle.graph(graph, precision)
            roles = GRAPH_INPUTS[graph]
            if len(spec.inputs) != len(roles) or len(spec.outputs) != 1:
                raise BundleError(
                    f"Bundle {self.bundle.path}: {graph} has inputs {[i['name'] for i in spec.inputs]} and outputs "
                    f"{[o['name'] for o in spec.outputs]}; the contract wants {list(roles)} and one output. Re-export "
                    "the bundle with this zscir.")
            inputs = dict(zip(roles, spec.inputs, strict=True))
            ids = inputs.get(TOKEN_IDS)
            self._io[graph] = GraphIO({role: entry["name"] for role, entry in inputs.items()}, spec.outputs[0]["name"],
                                      bool(self.bundle.text_causal and ids is not None and SEQUENCE_AXIS in ids["shape"]))
        return self._io[graph]

    def sequence_adaptive(self, graph: str) -> bool:
        """Whether `graph` is fed ids cut after the last EOT (see `_graph_io`)."""
        return self._graph_io(graph).sequence_adaptive

    def trim_token_ids(self, graph: str, ids: np.ndarray) -> np.ndarray:
        """The ids `graph` is fed: cut to `trimmed_sequence_length` of the batch's longest EOT position
        where the graph is sequence-adaptive (and trim_sequence is on); else as given."""
        if not self.trim_sequence or ids.ndim != 2 or not self.sequence_adaptive(graph):
            return ids
        return np.ascontiguousarray(trimmed_ids(ids, self.bundle.context_length))

    def run_graph(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """One call of one graph, unbatched: its output [B, D] float32 (e.g. for per-stage timing).

        feeds are keyed by the contract's input names (PIXELS, IMAGE_FEATURES, TOKEN_IDS); token ids of a
        sequence-adaptive graph are cut after the batch's last EOT first (`trim_token_ids`)."""
        io = self._graph_io(graph)
        if TOKEN_IDS in feeds:
            feeds = {**feeds, TOKEN_IDS: self.trim_token_ids(graph, feeds[TOKEN_IDS])}
        outputs = self._session(graph).infer({io.inputs[role]: value for role, value in feeds.items()})
        return np.asarray(outputs[io.output], dtype=np.float32)

    def _batched(self, graph: str, feeds: dict[str, np.ndarray]) -> np.ndarray:
        n = len(next(iter(feeds.values())))
        if n == 0:
            return np.empty((0, self.embed_dim), dtype=np.float32)
        parts = [self.run_graph(graph, {k: v[i:i + self.batch_size] for k, v in feeds.items()})
                 for i in range(0, n, self.batch_size)]
        return np.concatenate(parts)

    # --- images ------------------------------------------------------------------------------------------
    def preprocess(self, images: Sequence) -> np.ndarray:
        """Images (paths, bytes, PIL, uint8 arrays) -> pixels [B, 3, S, S] float32."""
        return preprocess([to_pil(im) for im in images], self.bundle.preprocess)

    def image_features(self, pixels: np.ndarray) -> np.ndarray:
        """Unnormalized image features [B, D] of preprocessed pixels [B, 3, S, S] (what phi consumes)."""
        size = self.bundle.preprocess.image_size
        if pixels.ndim != 4 or pixels.shape[1:] != (3, size, size):
            raise InputError(f"pixels must be [B, 3, {size}, {size}] for this bundle, got {list(pixels.shape)}.")
        return self._batched(IMAGE_ENCODER, {PIXELS: pixels})

    def encode_pixels(self, pixels: np.ndarray) -> np.ndarray:
        """Normalized image features [B, D] of preprocessed pixels [B, 3, S, S]."""
        return normalize(self.image_features(pixels))

    def _image_features_of(self, images: Sequence) -> np.ndarray:
        """Unnormalized features [N, D], decoding and preprocessing one batch at a time."""
        parts = [self.image_features(self.preprocess(images[i:i + self.batch_size]))
                 for i in range(0, len(images), self.batch_size)]
        return np.concatenate(parts) if parts else np.empty((0, self.embed_dim), dtype=np.float32)

    def encode_images(self, images: Sequence) -> np.ndarray:
        """Normalized image features [N, D] of images (paths, bytes, PIL images or uint8 arrays)."""
        return normalize(self._image_features_of(list(images)))

    # --- texts -------------------------------------------------------------------------------------------
    def token_ids(self, texts: Sequence[str]) -> np.ndarray:
        """Token ids [B, 77]; warns (TruncationWarning) for each text cut to the context length."""
        texts = list(texts)
        ids, truncated = self.tokenizer.encode(texts, return_truncated=True)  # [B, 77], [B]
        for i in np.flatnonzero(truncated):
            warnings.warn(TruncationWarning(
                f"Text {_shown(texts[i])} is longer than {self.bundle.context_length} CLIP tokens: the rest was "
                "dropped (the end-of-text token is kept). Shorten it to keep every word."), stacklevel=3)
        return ids

    def text_features(self, texts: Sequence[str]) -> np.ndarray:
        """Unnormalized text features [N, D] of raw texts (no template)."""
        return self._batched(TEXT_ENCODER, {TOKEN_IDS: self.token_ids(texts)})

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        return normalize(self.text_features(texts))

    # --- composed queries --------------------------------------------------------------------------------
    def template(self, template: str | None = None) -> str:
        """The phi prompt: a template string, the name of one of the bundle's templates, or its default."""
        templates = self.bundle.templates
        if template is None:
            if "default" not in templates:
                raise TemplateError(f"Bundle {self.bundle.path} has no default template: pass one, e.g. "
                                    f"'a photo of {self.placeholder} that {{caption}}'.")
            return templates["default"]
        return templates.get(template, template)

    def encode_queries(self, queries: Sequence[tuple], method: str | None = None, template: str | None = None,
                       alpha: float | None = None) -> np.ndarray:
        """Normalized query features [Q, D] for (reference image, modification text) pairs.

        method: "phi" (the bundle's pseudo-token encoder; its default when it has one), "slerp" (alpha =
        text weight, default the bundle's), "sum" (normalize(raw image + raw text), BGE-VL-CLIP's), or the
        baselines "image", "text", "average". Default: the bundle's method (`Bundle.default_method`). The
        template applies to phi only; the other methods use the text as given.
        """
        method = method or self.default_method
        self.check_method(method, alpha)
        queries = list(queries)
        images, texts = [q[0] for q in queries], [q[1] for q in queries]
        if method == PHI:
            return self._encode_phi(images, texts, template)
        v_img = self._image_features_of(images) if method != TEXT else None
        v_txt = self.text_features(texts) if method != IMAGE else None
        return self.compose(method, v_img, v_txt, alpha)

    def check_method(self, method: str, alpha: float | None = None) -> None:
        """Refuse, before any work, a method this bundle cannot run or an alpha out of range."""
        if method not in METHODS:
            raise InputError(f"Unknown method {method!r}: use one of {', '.join(METHODS)}.")
        if method == PHI and not self.bundle.has_phi:
            raise InputError(f"Method 'phi' needs a query encoder; bundle {self.bundle.path} "
                             f"(method {self.bundle.method}) has none{NO_PHI}.")
        if alpha is not None and not 0.0 <= alpha <= 1.0:
            raise InputError(f"alpha is the text weight of slerp and must be in [0, 1], got {alpha}.")
        if method == SUM:
            self.bundle.check_raw_features()

    def compose(self, method: str, v_img: np.ndarray | None, v_txt: np.ndarray | None,
                alpha: float | None = None) -> np.ndarray:
        """A training-free query [Q, D] (unit) from raw image and text features [Q, D] (None where unused).

        The one place the methods other than phi are computed: `encode_queries` and the server call it."""
        if method == TEXT:
            return normalize(v_txt)
        if method == IMAGE:
            return normalize(v_img)
        if method == AVERAGE:
            return average(v_img, v_txt)
        if method == SUM:
            return sum_query(v_img, v_txt)
        if method == SLERP:
            return slerp(v_img, v_txt, self.bundle.slerp_alpha if alpha is None else alpha)
        raise InputError(f"Method {method!r} is not a training-free method (phi runs the query encoder).")

    def _encode_phi(self, images: list, texts: list[str], template: str | None) -> np.ndarray:
        template = self.template(template)
        prompts = [fill_template(template, t, self.placeholder) for t in texts]
        parts = []
        for i in range(0, len(prompts), self.batch_size):
            v_img = self._image_features_of(images[i:i + self.batch_size])  # [B, D] unnormalized
            ids = self.token_ids(prompts[i:i + self.batch_size])  # [B, 77]
            for row in np.flatnonzero(~(ids == self.bundle.placeholder_id).any(axis=1)):
                warnings.warn(PlaceholderLostWarning(
                    f"Prompt {_shown(prompts[i + row])} lost its placeholder {self.placeholder!r} to truncation: "
                    "the reference image does not reach this query. Shorten the text or put the placeholder "
                    "earlier in the template."), stacklevel=2)
            parts.append(self.run_graph(QUERY_ENCODER, {IMAGE_FEATURES: v_img, TOKEN_IDS: ids}))
        return np.concatenate(parts) if parts else np.empty((0, self.embed_dim), dtype=np.float32)

    def close(self) -> None:
        with self._lock:
            for session in self._sessions.values():
                session.close()
            self._sessions.clear()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
