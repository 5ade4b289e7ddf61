"""`zscir-bench`: latency, search, cold start, training cost and accuracy reports (JSON, Markdown, PNG).

    zscir-bench latency --model ViT-B-32                 # exports a random-weight bundle, then measures
    zscir-bench latency --bundle zscir-out/bundle --checkpoint phi.safetensors --weights clip.safetensors
    zscir-bench search --dim 512 --sizes 10000,100000,1000000
    zscir-bench search --backend faiss,milvus --sizes 100000,1000000    # results/scale
    zscir-bench search --engines local,ray --bundle zscir-out/bundle --images 2000
    zscir-bench cold-start --model ViT-B-32
    zscir-bench train-cost --models zscir-tiny,ViT-B-32,ViT-L-14
    zscir-bench load                                     # idle vs every core busy, threads x wait policies
    zscir-bench accuracy --world zscir-out/world --checkpoint lincir.safetensors --checkpoint pic2word.safetensors

Commands parse and validate, call the library, and write `{kind}.json`, `{kind}.md` and plots to --out.
Heavy imports (torch, open_clip) happen inside the commands that need them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from zscir_infer.cli_style import Threads, command
from zscir_infer.cli_style import err_console as console
from zscir_infer.errors import UsageError

app = typer.Typer(
    help="Benchmarks of zscir: per-stage latency against the PyTorch reference and the machine's GEMM peak, "
    "FAISS search, cold start, LinCIR vs Pic2Word training cost, and accuracy across backends.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,
)
RESULTS = Path("results/bench")
DEFAULT_WORK = Path("runs/bench-work")  # ignored by git: exported bundles, weights, worlds

BundleOpt = Annotated[Path | None, typer.Option(
    "--bundle", exists=True, file_okay=False, help="A zscir bundle (directory with manifest.json).")]
ModelOpt = Annotated[str | None, typer.Option(
    "--model", help="Instead of --bundle: an open_clip architecture (e.g. ViT-B-32) exported with random weights "
    "(fp32, fp16, int8) into --work first.")]
MethodOpt = Annotated[str, typer.Option("--method", help="With --model: lincir, pic2word or slerp.")]
WorkOpt = Annotated[Path, typer.Option("--work", help="Where --model bundles, weights and phi are kept.")]
CheckpointOpt = Annotated[Path | None, typer.Option(
    "--checkpoint", exists=True, dir_okay=False,
    help="The bundle's phi checkpoint, so the PyTorch reference computes the same numbers "
    "(default: a random phi of the same form: same speed).")]
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", help="Backbone weights (file or open_clip tag) for the PyTorch reference.")]
OutOpt = Annotated[Path | None, typer.Option("--out", help="Report folder (default: results/bench/<kind>[-name]).")]
QuickOpt = Annotated[bool, typer.Option("--quick", help="Smoke run: 1 warm-up and 2 timed calls per figure.")]


def int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise UsageError(f"{option} takes comma-separated integers, e.g. 1,8,32; got {text!r}.") from exc
    if not values or any(v < 1 for v in values):
        raise UsageError(f"{option} needs positive integers, got {text!r}.")
    return values


def str_list(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


def _threads(threads: int | None) -> int:
    from zscir_bench.machine import default_threads

    return threads or default_threads()


def _bundle(bundle: Path | None, model: str | None, method: str, work: Path, checkpoint: Path | None,
            weights: str | None) -> tuple[Path, Path | None, str | None]:
    """(bundle, checkpoint, weights) from --bundle, or exported from --model."""
    if (bundle is None) == (model is None):
        raise UsageError("Pass exactly one of --bundle or --model.")
    if bundle is not None:
        if not (bundle / "manifest.json").is_file():
            raise UsageError(f"{bundle} has no manifest.json: it is not a zscir bundle (make one with "
                                     "zscir-export).")
        return bundle, checkpoint, weights
    from zscir_bench.bundles import speed_bundle

    console.print(f"Exporting {model} ({method}, random weights) into {work} (reused when present)...")
    made = speed_bundle(model, work, method)
    return made.bundle, made.checkpoint, str(made.weights)


def _write(report: dict, out: Path) -> None:
    from zscir_bench.report import write_report

    for path in write_report(report, out):
        typer.echo(f"wrote {path}")


@command(app, "latency")
def latency(
    bundle: BundleOpt = None,
    model: ModelOpt = None,
    method: MethodOpt = "lincir",
    work: WorkOpt = DEFAULT_WORK,
    checkpoint: CheckpointOpt = None,
    weights: WeightsOpt = None,
    backends: Annotated[str | None, typer.Option(
        "--backends", help="Comma-separated: torch, ort-fp32, ort-fp16, ort-int8, openvino-fp32 (and -fp16, -int8), "
        "ort-cuda-fp16, ort-tensorrt-fp16, "
        "trt-fp16. Default: all this machine and bundle can run. torch is always measured.")] = None,
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,8,32,128",
    gallery_size: Annotated[int, typer.Option("--gallery-size", min=1, help="Vectors searched per query.")] = 10_000,
    int8_static: Annotated[bool, typer.Option(
        help="Also build a statically quantized image encoder and time it beside fp32 and dynamic int8.")] = True,
    threads: Threads = None,
    out: OutOpt = None,
    quick: QuickOpt = False,
) -> None:
    """Per-stage latency (p50/p95/p99, items/s) per backend and batch, ratios to PyTorch, roofline."""
    from zscir_bench import latency as lat
    from zscir_bench.machine import recorded
    from zscir_bench.timing import QUICK_POLICY

    batches = int_list(batch, "--batch")
    names = str_list(backends) if backends else None
    bundle, checkpoint, weights = _bundle(bundle, model, method, work, checkpoint, weights)
    n = _threads(threads)
    policy = QUICK_POLICY if quick else lat.LATENCY_POLICY
    report = recorded("latency", n, lambda: lat.run_latency(
        bundle, names, batches, threads=n, policy=policy, gallery_size=gallery_size, checkpoint=checkpoint,
        weights=weights, int8_static=int8_static, progress=lambda msg: console.log(msg)))
    _write(report, out or RESULTS / f"latency-{bundle.name}")


@command(app, "search")
def search_bench(
    dim: Annotated[int | None, typer.Option("--dim", min=1, help="Vector dimension D (default: the bundle's, "
                                                                   "else 512).")] = None,
    bundle: BundleOpt = None,
    sizes: Annotated[str, typer.Option("--sizes", help="Comma-separated gallery sizes.")] = "10000,100000,1000000",
    queries: Annotated[int, typer.Option("--queries", min=1, help="Queries for recall and latency.")] = 1000,
    backend: Annotated[str | None, typer.Option(
        "--backend", help="Gallery stores compared on the same vectors through zscir's own Gallery (e.g. "
        "faiss,milvus): insert rate, build, recall@10, p50; report in results/scale. Without it: the FAISS index "
        "sweep.", show_default=False)] = None,
    spec: Annotated[str, typer.Option("--spec", help="With --backend: the index spec every store builds.")] = "auto",
    engines: Annotated[str | None, typer.Option(
        "--engines", help="Also time `zscir-infer index` per engine (e.g. local,ray) on --images generated PNGs "
        "with --bundle (results/scale).", show_default=False)] = None,
    images: Annotated[int, typer.Option("--images", min=1, help="With --engines: images indexed.")] = 2000,
    work: WorkOpt = DEFAULT_WORK,
    threads: Threads = None,
    out: OutOpt = None,
    quick: QuickOpt = False,
) -> None:
    """Flat, HNSW, IVF-Flat and IVF-PQ: build time, memory, p50 at batch 1, throughput at 256, recall@10.
    With --backend / --engines: gallery stores and indexing engines compared (results/scale)."""
    from zscir_bench import search_bench as sb
    from zscir_bench.machine import recorded
    from zscir_bench.timing import QUICK_POLICY
    from zscir_infer.bundle import load_bundle

    d = dim or (load_bundle(bundle, verify=False).embed_dim if bundle else 512)
    n = _threads(threads)
    if backend is not None or engines is not None:
        from zscir_infer.gallery import STORES

        stores = str_list(backend or "")
        unknown = [s for s in stores if s not in STORES]
        if unknown:
            raise UsageError(f"--backend {unknown[0]!r}: use gallery stores among {', '.join(STORES)}.")
        if engines is not None and bundle is None:
            raise UsageError("--engines times zscir-infer index: pass --bundle too.")
        policy = QUICK_POLICY if quick else sb.STORE_POLICY
        scale_work = work / "scale"

        def body() -> dict:
            report = {}
            if stores:
                report.update(sb.run_store_bench(d, int_list(sizes, "--sizes"), stores, scale_work,
                                                 min(queries, sb.STORE_QUERIES), n, spec=spec, policy=policy,
                                                 progress=lambda msg: console.log(msg)))
            if engines is not None:
                report["engine"] = sb.run_engine_bench(bundle, images, str_list(engines), scale_work,
                                                       progress=lambda msg: console.log(msg))
            return report

        report = recorded("scale", n, body)
        for path in sb.write_scale_report(report, out or Path("results/scale")):
            typer.echo(f"wrote {path}")
        return
    policies = (QUICK_POLICY, QUICK_POLICY) if quick else (sb.BATCH1_POLICY, sb.THROUGHPUT_POLICY)
    report = recorded("search", n, lambda: sb.run_search_bench(
        d, int_list(sizes, "--sizes"), queries, n, progress=lambda msg: console.log(msg),
        policy1=policies[0], policy_batch=policies[1]))
    _write(report, out or RESULTS / "search")


@command(app, "serve")
def serve_bench(
    bundle: BundleOpt = None,
    model: ModelOpt = None,
    method: MethodOpt = "lincir",
    work: WorkOpt = DEFAULT_WORK,
    gallery: Annotated[Path | None, typer.Option(
        "--gallery", exists=True, file_okay=False, help="A gallery of the bundle (or give --images).")] = None,
    images: Annotated[Path | None, typer.Option(
        "--images", exists=True, help="Images to index into a gallery in --work when --gallery is not given.")] = None,
    queries: Annotated[Path | None, typer.Option(
        "--queries", exists=True, dir_okay=False, help="A query batch file (reference, text) to send; default: "
        "gallery images with a few texts.")] = None,
    concurrency: Annotated[str, typer.Option("--concurrency", help="Comma-separated client counts.")] = "1,4,16,64",
    requests: Annotated[int, typer.Option("--requests", min=1, help="Requests per level (at most).")] = 2000,
    max_seconds: Annotated[float, typer.Option("--max-seconds", min=1.0, help="Time per level (at most).")] = 30.0,
    rss_requests: Annotated[str, typer.Option(
        "--rss-requests", help="SHORT,LONG: RSS after SHORT and after LONG requests (LONG 0: skip).")] = "100,10000",
    screenshot: Annotated[Path | None, typer.Option(
        "--screenshot", help="Also save the search page after the first --queries example as this PNG.")] = None,
    threads: Threads = None,
    out: OutOpt = None,
) -> None:
    """The HTTP server under N concurrent clients, batching on and off: req/s, p50/p95/p99, errors, RSS."""
    from zscir_bench import serve_bench as sv
    from zscir_bench.machine import recorded

    bundle, _, _ = _bundle(bundle, model, method, work, None, None)
    if gallery is None:
        if images is None:
            raise UsageError("Give --gallery, or --images to index into a gallery of this bundle.")
        gallery = sv.ensure_gallery(bundle, images, work)
    try:
        short, long = (int(x) for x in rss_requests.split(","))
    except ValueError:
        raise UsageError(f"--rss-requests takes SHORT,LONG (two counts, LONG 0 to skip), got {rss_requests!r}.") from None
    n = _threads(threads)
    report = recorded("serve", n, lambda: sv.run_serve_bench(
        bundle, gallery, concurrency=tuple(int_list(concurrency, "--concurrency")), requests=requests,
        max_seconds=max_seconds, rss_requests=(short, long), queries=queries, threads=threads,
        progress=lambda msg: console.log(msg)))
    target = out or Path("results/serve") / bundle.name
    for path in sv.write_serve_report(report, target):
        typer.echo(f"wrote {path}")
    if screenshot is not None:
        if queries is None:
            raise UsageError("--screenshot needs --queries (the example the page runs).")
        typer.echo(f"wrote {sv.screenshot(bundle, gallery, queries, screenshot)}")


@command(app, "cold-start")
def cold_start(
    bundle: BundleOpt = None,
    model: ModelOpt = None,
    method: MethodOpt = "lincir",
    work: WorkOpt = DEFAULT_WORK,
    checkpoint: CheckpointOpt = None,
    weights: WeightsOpt = None,
    runs: Annotated[int, typer.Option("--runs", min=1, help="Timed runs of each program.")] = 3,
    gallery_size: Annotated[int, typer.Option("--gallery-size", min=1)] = 10_000,
    threads: Threads = None,
    out: OutOpt = None,
) -> None:
    """`zscir-infer query` from a fresh process vs the PyTorch reference doing the same query."""
    from zscir_bench.cold_start import run_cold_start
    from zscir_bench.machine import recorded

    bundle, checkpoint, weights = _bundle(bundle, model, method, work, checkpoint, weights)
    n = _threads(threads)
    report = recorded("cold_start", n, lambda: run_cold_start(
        bundle, threads=n, runs=runs, gallery_size=gallery_size, checkpoint=checkpoint, weights=weights))
    _write(report, out or RESULTS / f"cold-start-{bundle.name}")


@command(app, "fusions")
def fusions(
    bundle: BundleOpt = None,
    model: ModelOpt = None,
    method: MethodOpt = "lincir",
    work: WorkOpt = DEFAULT_WORK,
    batch: Annotated[str, typer.Option("--batch", help="Comma-separated batch sizes.")] = "1,32",
    threads: Threads = None,
    out: OutOpt = None,
    quick: QuickOpt = False,
) -> None:
    """ONNX Runtime's transformer fusions on the bundle's fp32 graphs: what fuses, parity, speed, decision."""
    from zscir_bench import fusions as fu
    from zscir_bench.machine import recorded
    from zscir_bench.timing import QUICK_POLICY

    bundle, _, _ = _bundle(bundle, model, method, work, None, None)
    n = _threads(threads)
    report = recorded("fusions", n, lambda: fu.run_fusions(
        bundle, int_list(batch, "--batch"), threads=n, policy=QUICK_POLICY if quick else fu.FUSIONS_POLICY,
        progress=lambda msg: console.log(msg)))
    _write(report, out or RESULTS / f"fusions-{bundle.name}")


@command(app, "train-cost")
def train_cost(
    models: Annotated[str, typer.Option("--models", help="Comma-separated open_clip architectures (random "
                                                         "weights).")] = "zscir-tiny,ViT-B-32,ViT-L-14",
    batch: Annotated[int, typer.Option("--batch", min=2, help="Global batch, the same for both methods.")] = 32,
    precision: Annotated[str, typer.Option("--precision", help="fp32, or bf16 autocast (AVX-512 BF16 CPUs).")] = "fp32",
    threads: Threads = None,
    out: OutOpt = None,
    quick: QuickOpt = False,
) -> None:
    """LinCIR (captions) vs Pic2Word (images): step time, data time and samples/s on the same backbone."""
    from zscir_bench import train_cost as tc
    from zscir_bench.machine import recorded
    from zscir_bench.timing import QUICK_POLICY

    if precision not in ("fp32", "bf16"):
        raise UsageError(f"--precision {precision!r}: use fp32 or bf16.")
    n = _threads(threads)
    policies = (QUICK_POLICY, QUICK_POLICY) if quick else (tc.STEP_POLICY, tc.DATA_POLICY)

    def body() -> dict:
        rows = []
        for name in str_list(models):
            console.log(f"train cost: {name}, batch {batch}")
            rows.append(tc.backbone_cost(name, batch, precision, n, *policies))
        return {"precision": precision, "threads": n, "backbones": rows,
                "steps_note": f"{policies[0].warmup} warm-up step(s), then at least {policies[0].min_reps} timed "
                              f"steps and {policies[0].min_seconds} s per method."}

    _write(recorded("train_cost", n, body), out or RESULTS / "train-cost")


@command(app, "load")
def load_bench(
    models: Annotated[str, typer.Option(
        "--models", help="Comma-separated open_clip architectures whose bundles (random weights, exported into --work "
        "once) are encoded; empty: no encoding figures.")] = "world-clip,ViT-B-32",
    loads: Annotated[str, typer.Option("--loads", help="Comma-separated background loads: python, threaded.")]
    = "python,threaded",
    rounds: Annotated[int, typer.Option("--rounds", min=1, help="Idle/loaded pairs per configuration and load.")] = 2,
    train: Annotated[bool, typer.Option(help="Measure LinCIR training on the world (world-clip, batch 128).")] = True,
    work: WorkOpt = DEFAULT_WORK,
    out: OutOpt = None,
    quick: QuickOpt = False,
) -> None:
    """Training and encoding throughput idle vs with every core busy, per thread count and wait policy."""
    from zscir_bench import load as ld
    from zscir_bench.machine import default_threads, recorded
    from zscir_bench.timing import QUICK_POLICY

    kinds = str_list(loads)
    unknown = [k for k in kinds if k not in ld.LOADS]
    if unknown or not kinds:
        raise UsageError(f"--loads {loads!r}: use one or more of {', '.join(ld.LOADS)}.")
    bundles = {}
    for name in str_list(models):  # _bundle says what it exports
        bundles[name], _, _ = _bundle(None, name, "lincir", work, None, None)
    cores = default_threads()
    policies = (QUICK_POLICY, QUICK_POLICY) if quick else (ld.TRAIN_POLICY, ld.ENCODE_POLICY)
    report = recorded("load", cores, lambda: ld.run_load(
        cores, bundles, kinds, 1 if quick else rounds, *policies, work=work / "load", train=train,
        progress=lambda msg: console.log(msg) if msg.startswith("[") else None))
    report["load"]["shared"] = ld.others_shared(report)  # the load average counts our own background load
    _write(report, out or RESULTS / "load")


@command(app, "accuracy")
def accuracy(
    world: Annotated[Path, typer.Option("--world", exists=True, file_okay=False,
                                        help="A shapes world (zscir-train world --out DIR).")],
    checkpoint: Annotated[list[Path] | None, typer.Option(
        "--checkpoint", exists=True, dir_okay=False, help="A phi checkpoint trained on the world (repeatable).")] = None,
    backbone: Annotated[str, typer.Option("--backbone", help="The backbone of the slerp/baseline bundle.")] = "world-clip",
    weights: Annotated[str | None, typer.Option(
        "--weights", help="Backbone weights (default for world-clip: the committed ones).")] = None,
    backends: Annotated[str, typer.Option("--backends")] = "torch,ort-fp32,ort-fp16,ort-int8",
    work: WorkOpt = DEFAULT_WORK,
    threads: Threads = None,
    out: OutOpt = None,
) -> None:
    """R@1/5/10 and mAP@10 of every method on the world's test queries: PyTorch, ORT fp32, fp16, int8."""
    from zscir_bench.accuracy import run_accuracy
    from zscir_bench.machine import recorded

    if weights is None and backbone == "world-clip":
        from zscir_train.world import world_clip_path

        weights = str(world_clip_path())
    if not (world / "ground_truth").is_dir():
        raise UsageError(f"{world} has no ground_truth/: generate it with `zscir-train world --out {world}`.")
    n = _threads(threads)
    report = recorded("accuracy", n, lambda: run_accuracy(
        world, checkpoint or [], backbone, weights, work / "accuracy", backends=str_list(backends), threads=n,
        progress=lambda msg: console.log(msg)))
    _write(report, out or RESULTS / "accuracy")


@command(app, "all")
def run_all(
    model: Annotated[str, typer.Option("--model", help="The architecture measured (random weights).")] = "ViT-B-32",
    world: Annotated[Path | None, typer.Option(
        "--world", exists=True, file_okay=False, help="With a shapes world: the accuracy report too.")] = None,
    checkpoint: Annotated[list[Path] | None, typer.Option(
        "--checkpoint", exists=True, dir_okay=False, help="World phi checkpoints for the accuracy report.")] = None,
    work: WorkOpt = DEFAULT_WORK,
    threads: Threads = None,
) -> None:
    """Every report into results/bench/, one benchmark after the other (what the README shows)."""
    latency(model=model, work=work, threads=threads)
    search_bench(threads=threads)
    cold_start(model=model, work=work, threads=threads)
    train_cost(threads=threads)
    load_bench(work=work)  # ~10 min: every configuration idle and with every core busy
    if world is not None:
        accuracy(world=world, checkpoint=checkpoint, work=work, threads=threads)


if __name__ == "__main__":
    app()
