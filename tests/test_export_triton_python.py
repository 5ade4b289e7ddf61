"""The Triton repository's Python models run on CPU, and its ensembles step by step, without Triton.

`triton_python_backend_utils` exists only inside Triton's Python backend: `FakePbUtils` below gives the
part of its API model.py uses, with the real signatures (python_backend src/pb_stub.cc and
src/resources/triton_python_backend_utils.py): `Tensor(name, array)` with `name()` / `as_numpy()`,
`InferenceResponse(output_tensors=[], error=None)`, `TritonError(message, code=INTERNAL)`,
`get_input_tensor_by_name`, `get_output_tensor_by_name`, `get_output_config_by_name`,
`triton_string_to_numpy`, `Logger`. It is put in sys.modules only inside these tests. `initialize` gets
what Triton's stub gets: strings, `model_config` as the JSON Triton makes of the config (protobuf JSON with
the proto field names: int64 dims as strings), `model_repository` the model's directory.

`run_ensemble` executes an ensemble config as Triton would: its steps in order, each step's inputs taken
from the ensemble tensors its input_map names, checked against the model's declared type and dims; a
Python model gets all requests in one execute call (as the dynamic batcher hands them), an ONNX model
runs ONNX Runtime on the repository's model.onnx, the requests of one shape concatenated along the batch
axis. Its results must equal zscir_infer.Runtime's for the same image bytes and texts.
"""

import importlib.util
import io
import itertools
import shutil
import sys
import types

import numpy as np
import onnxruntime as ort
import pytest
from google.protobuf import json_format
from PIL import Image
from zscir_export.triton import TritonOptions, write_triton_repository

from tests.test_export_triton import model_config_pb2, parse
from zscir_infer import Runtime
from zscir_infer.contract import fill_template, trimmed_sequence_length

TOLERANCE = 1e-5
NUMPY_OF = {"TYPE_FP32": np.float32, "TYPE_FP16": np.float16, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64,
            "TYPE_STRING": np.object_}
TEXTS = ["red", "make it a sketch of a small red bird sitting on a wooden fence in the early morning",
         "", "as origami with blue and green paper folded into the shape of a large whale"]


class FakePbUtils(types.ModuleType):
    """triton_python_backend_utils, the part model.py uses."""

    def __init__(self):
        super().__init__("triton_python_backend_utils")
        self.warnings = []
        module = self

        class Tensor:
            def __init__(self, name, array):
                if not isinstance(array, np.ndarray) or not array.flags.c_contiguous:
                    raise TypeError(f"Tensor {name}: Triton copies C-contiguous numpy arrays only")
                self._name, self._array = name, array

            def name(self):
                return self._name

            def as_numpy(self):
                return self._array

        class TritonError:
            INTERNAL, INVALID_ARG = "INTERNAL", "INVALID_ARG"

            def __init__(self, message, code="INTERNAL"):
                self._message, self._code = message, code

            def message(self):
                return self._message

            def code(self):
                return self._code

        class InferenceResponse:
            def __init__(self, output_tensors=(), error=None, parameters=None):
                self._outputs, self._error = list(output_tensors), error

            def output_tensors(self):
                return self._outputs

            def has_error(self):
                return self._error is not None

            def error(self):
                return self._error

        class Logger:
            @staticmethod
            def log_warn(message):
                module.warnings.append(message)

        self.Tensor, self.TritonError, self.InferenceResponse, self.Logger = Tensor, TritonError, InferenceResponse, Logger

    @staticmethod
    def get_input_tensor_by_name(request, name):
        return next((t for t in request.inputs() if t.name() == name), None)

    @staticmethod
    def get_output_tensor_by_name(response, name):
        return next((t for t in response.output_tensors() if t.name() == name), None)

    @staticmethod
    def get_output_config_by_name(model_config, name):
        return next((o for o in model_config.get("output", []) if o["name"] == name), None)

    @staticmethod
    def triton_string_to_numpy(triton_type):
        return NUMPY_OF[triton_type]


class Request:
    """A pb_utils.InferenceRequest as execute() sees it: its input tensors."""

    def __init__(self, tensors):
        self._inputs = tensors

    def inputs(self):
        return self._inputs


@pytest.fixture
def pb_utils(monkeypatch):
    fake = FakePbUtils()
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", fake)
    return fake


_loaded = itertools.count()


def load_python_model(repo, name):
    """Import REPO/name/1/model.py as Triton's stub does and initialize it with the args Triton passes."""
    version_dir = repo / name / "1"
    spec = importlib.util.spec_from_file_location(f"triton_model_{name}_{next(_loaded)}", version_dir / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.TritonPythonModel()
    config = json_format.MessageToJson(parse(repo / name / "config.pbtxt"), preserving_proto_field_name=True)
    model.initialize({"model_config": config, "model_instance_kind": "CPU", "model_instance_name": f"{name}_0",
                      "model_instance_device_id": "0", "model_repository": str(repo / name),
                      "model_version": "1", "model_name": name})
    return model


def strings(*values):
    """A TYPE_STRING input of one request: object array [n, 1] of bytes."""
    return np.array([[v.encode() if isinstance(v, str) else v] for v in values], dtype=np.object_)


def image_bytes(size, seed, kind="PNG"):
    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, kind)
    return buffer.getvalue()


class Ensemble:
    """Runs a repository's ensembles step by step (see the module doc); records each step's batch."""

    def __init__(self, repo):
        self.repo, self.python, self.sessions, self.calls = repo, {}, {}, []

    def config(self, name):
        return parse(self.repo / name / "config.pbtxt")

    def run(self, name, requests):
        """requests: [{ensemble input: array [n, ...]}] -> per request {output: array} or an error message."""
        config = self.config(name)
        state, errors = [dict(r) for r in requests], [None] * len(requests)
        for step in config.ensemble_scheduling.step:
            live = [i for i, e in enumerate(errors) if e is None]
            model = self.config(step.model_name)
            declared = {t.name: t for t in model.input}
            feeds = []
            for i in live:
                feed = {model_input: state[i][tensor] for model_input, tensor in step.input_map.items()}
                for model_input, value in feed.items():  # what Triton checks before a model runs
                    want = declared[model_input]
                    assert value.dtype == NUMPY_OF[model_config_pb2.DataType.Name(want.data_type)], model_input
                    assert len(value.shape) == len(want.dims) + 1 and all(
                        d in (-1, s) for d, s in zip(want.dims, value.shape[1:], strict=True)), (model_input, value.shape)
                feeds.append(feed)
            results = self.run_model(step.model_name, model, feeds)
            for i, result in zip(live, results, strict=True):
                if isinstance(result, str):
                    errors[i] = f"{step.model_name}: {result}"
                else:
                    state[i].update({tensor: result[model_output] for model_output, tensor in step.output_map.items()})
        return [e if e is not None else {o.name: state[i][o.name] for o in config.output} for i, e in enumerate(errors)]

    def run_model(self, name, config, feeds):
        self.calls.append((name, [{k: v.shape for k, v in f.items()} for f in feeds]))
        if config.backend == "python":
            if name not in self.python:
                self.python[name] = load_python_model(self.repo, name)
            pb = sys.modules["triton_python_backend_utils"]
            responses = self.python[name].execute([Request([pb.Tensor(k, v) for k, v in f.items()]) for f in feeds])
            assert len(responses) == len(feeds)
            return [r.error().message() if r.has_error() else {t.name(): t.as_numpy() for t in r.output_tensors()}
                    for r in responses]
        assert config.backend == "onnxruntime"
        if name not in self.sessions:
            self.sessions[name] = ort.InferenceSession(str(self.repo / name / "1" / "model.onnx"),
                                                       providers=["CPUExecutionProvider"])
        session, results = self.sessions[name], [None] * len(feeds)
        shapes = [tuple((k, v.shape[1:]) for k, v in sorted(f.items())) for f in feeds]
        for shape in dict.fromkeys(shapes):  # the dynamic batcher joins requests of one shape only
            members = [i for i, s in enumerate(shapes) if s == shape]
            batch = {k: np.concatenate([feeds[i][k] for i in members]) for k in feeds[members[0]]}
            outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, batch), strict=True))
            start = 0
            for i in members:
                n = len(next(iter(feeds[i].values())))
                results[i] = {k: v[start:start + n] for k, v in outputs.items()}
                start += n
        return results


@pytest.fixture(scope="module")
def lincir_repo(tiny_bundle, tmp_path_factory):
    repo = tmp_path_factory.mktemp("triton") / "models"
    write_triton_repository(tiny_bundle, repo, TritonOptions(max_batch_size=16, preferred_batch_sizes=(4,)))
    return repo


@pytest.fixture(scope="module")
def runtime(tiny_bundle):
    with Runtime(tiny_bundle) as rt:
        yield rt


def close(got, want):
    return np.abs(np.asarray(got) - np.asarray(want)).max() <= TOLERANCE


def test_composed_query_ensemble_equals_the_runtime(lincir_repo, runtime, pb_utils):
    images = [image_bytes((40, 30), 1), image_bytes((32, 64), 2, "JPEG"), image_bytes((50, 50), 3),
              image_bytes((33, 35), 4)]
    ensemble = Ensemble(lincir_repo)
    results = ensemble.run("composed_query", [{"IMAGE": strings(im), "TEXT": strings(t)}
                                              for im, t in zip(images, TEXTS, strict=True)])
    want = runtime.encode_queries(list(zip(images, TEXTS, strict=True)))
    got = np.concatenate([r["QUERY"] for r in results])
    assert got.shape == want.shape and got.dtype == np.float32 and close(got, want)
    # the tokenizer cut the batch's ids after its longest end-of-text, as the runtime does
    prompts = [fill_template(runtime.template(), t, runtime.placeholder) for t in TEXTS]
    ids = runtime.token_ids(prompts)
    length = trimmed_sequence_length(int(ids.argmax(axis=1).max()), 77)
    (query_call,) = [shapes for name, shapes in ensemble.calls if name == "query_encoder"]
    assert [s["token_ids"] for s in query_call] == [(1, length)] * 4 and 8 < length < 77
    alone = ensemble.run("composed_query", [{"IMAGE": strings(images[0]), "TEXT": strings(TEXTS[0])}])
    assert close(alone[0]["QUERY"], want[:1])  # a shorter cut, the same query
    assert ensemble.calls[-1][1][0]["token_ids"] == (1, 8)


def test_text_and_image_ensembles_equal_the_runtime(lincir_repo, runtime, pb_utils):
    ensemble = Ensemble(lincir_repo)
    texts = ensemble.run("text_embedding", [{"TEXT": strings(TEXTS[0], TEXTS[1])}, {"TEXT": strings(TEXTS[2])},
                                            {"TEXT": strings(TEXTS[3])}])  # the first request holds 2 rows
    assert [r["TEXT_EMBEDDING"].shape for r in texts] == [(2, 48), (1, 48), (1, 48)]
    assert close(np.concatenate([r["TEXT_EMBEDDING"] for r in texts]), runtime.encode_texts(TEXTS))
    assert close(np.concatenate([r["TEXT_FEATURES"] for r in texts]), runtime.text_features(TEXTS))
    images = [image_bytes((64, 48), 5), image_bytes((20, 90), 6, "JPEG"), image_bytes((32, 32), 7)]
    found = ensemble.run("image_embedding", [{"IMAGE": strings(im)} for im in images])
    assert close(np.concatenate([r["IMAGE_EMBEDDING"] for r in found]), runtime.encode_images(images))
    assert close(np.concatenate([r["IMAGE_FEATURES"] for r in found]), runtime.image_features(runtime.preprocess(images)))


def test_a_bad_request_gets_an_error_and_the_others_their_results(lincir_repo, runtime, pb_utils):
    images = [image_bytes((40, 30), 8), b"not an image at all", image_bytes((30, 40), 9)]
    texts = ["as a drawing", "red", "in the snow"]
    requests = [{"IMAGE": strings(im), "TEXT": strings(t)} for im, t in zip(images, texts, strict=True)]
    results = Ensemble(lincir_repo).run("composed_query", requests)
    assert isinstance(results[1], str) and "preprocess" in results[1] and "not an image" in results[1]
    want = runtime.encode_queries([(images[0], texts[0]), (images[2], texts[2])])
    assert close(np.concatenate([results[0]["QUERY"], results[2]["QUERY"]]), want)
    preprocess = load_python_model(lincir_repo, "preprocess")
    responses = preprocess.execute([Request([pb_utils.Tensor("IMAGE", strings(im))]) for im in images])
    assert [r.has_error() for r in responses] == [False, True, False]
    assert responses[1].error().code() == pb_utils.TritonError.INVALID_ARG
    assert pb_utils.get_output_tensor_by_name(responses[0], "pixels").as_numpy().shape == (1, 3, 32, 32)
    tokenizer = load_python_model(lincir_repo, "text_tokenizer")
    responses = tokenizer.execute([Request([pb_utils.Tensor("TEXT", strings(b"\xff\xfe broken"))]),
                                   Request([pb_utils.Tensor("TEXT", strings("fine"))])])
    assert responses[0].has_error() and "UnicodeDecodeError" in responses[0].error().message()
    assert not responses[1].has_error()


def test_the_tokenizer_warns_and_checks_its_files(lincir_repo, tmp_path, pb_utils):
    tokenizer = load_python_model(lincir_repo, "query_tokenizer")
    (response,) = tokenizer.execute([Request([pb_utils.Tensor("TEXT", strings("word " * 80))])])
    assert response.output_tensors()[0].as_numpy().shape == (1, 77)
    assert any("longer than 77" in w for w in pb_utils.warnings)
    copy = tmp_path / "models"
    shutil.copytree(lincir_repo / "query_tokenizer", copy / "query_tokenizer")
    (copy / "query_tokenizer" / "1" / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match="sha256"):
        load_python_model(copy, "query_tokenizer")


def test_the_slerp_bundle_composes_in_its_compose_model(tiny_slerp_bundle, tmp_path, pb_utils):
    repo = tmp_path / "models"
    write_triton_repository(tiny_slerp_bundle, repo, TritonOptions(max_batch_size=8, preferred_batch_sizes=(4,)))
    images = [image_bytes((40, 30), 10), image_bytes((30, 44), 11), image_bytes((36, 36), 12), image_bytes((9, 70), 13)]
    results = Ensemble(repo).run("composed_query", [{"IMAGE": strings(im), "TEXT": strings(t)}
                                                    for im, t in zip(images, TEXTS, strict=True)])
    with Runtime(tiny_slerp_bundle) as rt:
        assert rt.default_method == "slerp"
        want = rt.encode_queries(list(zip(images, TEXTS, strict=True)))
    assert close(np.concatenate([r["QUERY"] for r in results]), want)


def test_model_py_names_the_missing_package(lincir_repo, monkeypatch, pb_utils):
    monkeypatch.setitem(sys.modules, "zscir_infer.tokenizer", None)  # as if zscir were not installed
    with pytest.raises(ImportError, match="install zscir.s wheel"):
        load_python_model(lincir_repo, "normalize")
