"""A zscir step in Triton's Python backend (copied by zscir_export.triton as REPO/<model>/1/model.py).

Which step comes from `zscir.json` beside this file ("role"), written from the bundle's manifest:
- preprocess: IMAGE (encoded image bytes) -> pixels [3, S, S], decoded and preprocessed as
  zscir_infer.Runtime does (`load_image`, EXIF orientation applied, then `preprocess_image`);
- tokenize: TEXT (UTF-8) -> token ids [L]: the template filled with the text (the query tokenizer of a phi
  bundle) or the text as given, by zscir_infer's CLIP tokenizer on the bundle's tokenizer.json (copied
  beside this file, its sha256 checked). When the graph is sequence-adaptive ("trim"), the ids of all the
  requests of one execute call are cut to their longest end-of-text position + 1, rounded up as
  `zscir_infer.contract.trimmed_sequence_length` rounds (as the runtime cuts a batch): the requests of a
  call share one length, so the encoder's dynamic batcher can join them;
- normalize: features [D] -> unit rows (`zscir_infer.runtime.normalize`);
- compose: image_features [D], text_features [D] -> query [D] by the bundle's training-free method
  (`zscir_infer.runtime.slerp` with the manifest's alpha, `sum_query` or `average`).

Triton hands `execute` the requests its dynamic batcher gathered; each request's tensors have their own
batch axis (a TYPE_STRING input of dims [1] arrives as a numpy object array [n, 1] of bytes). All rows are
computed together and split back; a request whose input cannot be read (an undecodable image, text that
is not UTF-8) gets an error response, the others their results.
"""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

try:
    from zscir_infer.contract import (
        AVERAGE,
        SLERP,
        SUM,
        PreprocessConfig,
        fill_template,
        sha256_file,
        trimmed_ids,
    )
    from zscir_infer.preprocess import load_image, preprocess_image
    from zscir_infer.runtime import average, normalize, slerp, sum_query
    from zscir_infer.tokenizer import ClipTokenizer
except ImportError as exc:  # the server's Python lacks zscir
    raise ImportError(f"zscir's Triton models need zscir_infer in the server's Python ({exc}): "
                      "install zscir's wheel (pip wheel --no-deps .) in the Triton container; see docs/triton.md.") from exc

SETTINGS_FILE = "zscir.json"
SHOWN_CHARS = 60


def _bytes(value) -> bytes:
    """One element of a TYPE_STRING tensor (bytes; numpy may hand np.bytes_ or, from a client, str)."""
    return value.encode("utf-8") if isinstance(value, str) else bytes(value)


def _warn(message: str) -> None:
    logger = getattr(pb_utils, "Logger", None)  # Triton >= 23.05
    if logger is not None:
        logger.log_warn(message)


def _error(message: str, invalid_input: bool) -> object:
    code = getattr(pb_utils.TritonError, "INVALID_ARG", None) if invalid_input else None
    error = pb_utils.TritonError(message) if code is None else pb_utils.TritonError(message, code)
    return pb_utils.InferenceResponse(output_tensors=[], error=error)


class Preprocess:
    def __init__(self, settings: dict, directory: Path):
        self.cfg = PreprocessConfig.from_dict(settings["preprocess"])

    def rows(self, images: np.ndarray) -> list:
        return [preprocess_image(load_image(_bytes(v)), self.cfg) for v in images.reshape(-1)]

    def run(self, rows: list, dtype) -> np.ndarray:
        return np.stack(rows).astype(dtype, copy=False)


class Tokenize:
    def __init__(self, settings: dict, directory: Path):
        path = directory / settings["tokenizer"]
        if sha256_file(path) != settings["tokenizer_sha256"]:
            raise ValueError(f"{path} does not have the sha256 the bundle's manifest records: write the Triton "
                             "repository again from the bundle.")
        self.context_length = int(settings["context_length"])
        self.tokenizer = ClipTokenizer.from_file(path, self.context_length)
        self.template, self.placeholder = settings["template"], settings["placeholder"]
        self.placeholder_id, self.trim = settings["placeholder_id"], bool(settings["trim"])
        if self.placeholder is not None and self.tokenizer.token_id(self.placeholder) != self.placeholder_id:
            raise ValueError(f"The tokenizer gives placeholder {self.placeholder!r} another id than the manifest's "
                             f"{self.placeholder_id}: write the Triton repository again from the bundle.")

    def rows(self, texts: np.ndarray) -> list:
        texts = [_bytes(v).decode("utf-8") for v in texts.reshape(-1)]
        if self.template is None:
            return texts
        return [fill_template(self.template, text, self.placeholder) for text in texts]

    def run(self, prompts: list, dtype) -> np.ndarray:
        ids, truncated = self.tokenizer.encode(prompts, dtype=dtype, return_truncated=True)
        for i in np.flatnonzero(truncated):
            _warn(f"Text {prompts[i][:SHOWN_CHARS]!r} is longer than {self.context_length} CLIP tokens: the rest "
                  "was dropped.")
        if self.placeholder is not None:
            for i in np.flatnonzero(~(ids == self.placeholder_id).any(axis=1)):
                _warn(f"Prompt {prompts[i][:SHOWN_CHARS]!r} lost its placeholder to truncation: the reference "
                      "image does not reach this query.")
        return np.ascontiguousarray(trimmed_ids(ids, self.context_length)) if self.trim else ids


class Normalize:
    def __init__(self, settings: dict, directory: Path):
        pass

    def rows(self, features: np.ndarray) -> list:
        return list(np.asarray(features, dtype=np.float32))

    def run(self, rows: list, dtype) -> np.ndarray:
        return normalize(np.stack(rows)).astype(dtype, copy=False)


class Compose:
    def __init__(self, settings: dict, directory: Path):
        method, alpha = settings["method"], float(settings["alpha"])
        formulas = {SLERP: lambda a, b: slerp(a, b, alpha), SUM: sum_query, AVERAGE: average}
        if method not in formulas:
            raise ValueError(f"The compose model runs {sorted(formulas)}, not {method!r}.")
        self.formula = formulas[method]

    def rows(self, image_features: np.ndarray, text_features: np.ndarray) -> list:
        if len(image_features) != len(text_features):
            raise ValueError(f"{len(image_features)} image features but {len(text_features)} text features.")
        return list(zip(np.asarray(image_features, np.float32), np.asarray(text_features, np.float32), strict=True))

    def run(self, rows: list, dtype) -> np.ndarray:
        return self.formula(np.stack([r[0] for r in rows]), np.stack([r[1] for r in rows])).astype(dtype, copy=False)


STEPS = {"preprocess": Preprocess, "tokenize": Tokenize, "normalize": Normalize, "compose": Compose}


class TritonPythonModel:
    def initialize(self, args: dict) -> None:
        """args: strings; model_config (JSON), model_repository (this model's directory), model_version."""
        config = json.loads(args["model_config"])
        directory = Path(args["model_repository"]) / args["model_version"]
        settings = json.loads((directory / SETTINGS_FILE).read_text(encoding="utf-8"))
        self.inputs = [tensor["name"] for tensor in config["input"]]
        (output,) = config["output"]
        self.output = output["name"]
        self.dtype = pb_utils.triton_string_to_numpy(output["data_type"])
        self.step = STEPS[settings["role"]](settings, directory)

    def execute(self, requests: list) -> list:
        responses = [None] * len(requests)
        parsed = []  # (request index, its rows)
        for i, request in enumerate(requests):
            try:
                rows = self.step.rows(*(pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                                        for name in self.inputs))
                if not rows:
                    raise ValueError("the request has no rows (batch size 0)")
                parsed.append((i, rows))
            except Exception as exc:  # this request's input: the others still run
                responses[i] = _error(f"{type(exc).__name__}: {exc}", invalid_input=True)
        if not parsed:
            return responses
        try:
            out = self.step.run([row for _, rows in parsed for row in rows], self.dtype)
        except Exception as exc:
            for i, _ in parsed:
                responses[i] = _error(f"{type(exc).__name__}: {exc}", invalid_input=False)
            return responses
        start = 0
        for i, rows in parsed:
            part = out[start:start + len(rows)]
            responses[i] = pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(self.output, part)])
            start += len(rows)
        return responses

    def finalize(self) -> None:
        self.step = None
