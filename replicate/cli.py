"""The ``replicate`` command line. Every subcommand has ``--help``.

User mistakes (a missing file, malformed JSON, unknown ids) print one ``replicate: error:`` line and
exit with status 2; recoverable problems print ``replicate: warning:`` lines with counts.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

from . import __version__
from .errors import ReplicateError
from .profiles import DEFAULT as DEFAULT_PROFILE
from .profiles import GENERATED
from .profiles import MAIN as MAIN_PROFILES
from .profiles import NAMES as PROFILE_NAMES


def _cmd_data_synth(args: argparse.Namespace) -> int:
    from .data import synth

    files = synth.generate(args.profile, args.out, seed=args.seed, workers=args.workers,
                           overwrite=args.overwrite, progress=not args.quiet)
    for split, path in files.items():
        print(f"{split}: {path}  (images in {synth.dataset_paths(args.out, split)[1]})")
    return 0


def _cmd_data_check(args: argparse.Namespace) -> int:
    from .data.validate import check_file

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the report lists every problem itself
        report = check_file(args.annotations, images_dir=args.images, check_image_sizes=args.check_sizes)
    if args.json:
        print(json.dumps({"source": report.source, "ok": report.ok, "stats": report.stats,
                          "problems": [vars(p) for p in report.problems]}, indent=1))
    else:
        print(report.format())
    return 0 if report.ok else 1


def _cmd_data_stats(args: argparse.Namespace) -> int:
    from .data.card import split_statistics

    for path in args.annotations:
        row = split_statistics(path)
        print(json.dumps(row, indent=1) if args.json else "\n".join(f"{k:>24}: {v}" for k, v in row.items()))
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from .evaluation import SUMMARY_KEYS, evaluate_files, format_summary

    metrics = evaluate_files(args.gt, args.dets, iou_type=args.iou_type, backend=args.backend)
    if args.json:
        keys = metrics if args.all else SUMMARY_KEYS
        print(json.dumps({k: metrics[k] for k in keys}))
    else:
        print(format_summary(metrics))
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from .book.build import build_book

    index = build_book(profile=args.profile, data_root=args.data_root, jobs=args.jobs, only=args.only,
                       executor=args.executor, seeds=args.seeds, run_missing=args.run_missing)
    print(f"book built: {index}")
    return 0


def _cmd_pretrain(args: argparse.Namespace) -> int:
    from .engine.pretrain import ZERO_INIT_RESIDUAL, PretrainConfig, ensure_pretrained, pretrain
    from .models.checkpoints import resolve_weights
    from .profiles import get as get_profile

    if args.ensure:
        scale = get_profile(args.profile).model
        for backbone, weights in sorted((scale.weights if scale else {}).items()):
            if backbone not in args.backbone:
                continue
            path = resolve_weights(weights)
            present = path.is_file()
            ensure_pretrained(weights, profile=args.profile, data_root=args.data_root, progress=not args.quiet)
            print(f"{weights}: {'present' if present else 're-made from its record; its SHA-256 matches'}")
        return 0
    for backbone in args.backbone:
        zero_init = ZERO_INIT_RESIDUAL[backbone] if args.zero_init_residual is None else args.zero_init_residual
        cfg = PretrainConfig(backbone=backbone, epochs=args.epochs, seed=args.seed, zero_init_residual=zero_init)
        out = args.out or Path("results") / "pretrained" / args.profile
        doc = pretrain(args.profile, out, cfg, data_root=args.data_root, progress=not args.quiet)
        print(f"{out / doc['weights']}: {doc['trained_on']['objects']} training objects, train accuracy "
              f"{100 * doc['train_accuracy']:.1f} %, held-out {100 * doc['held_out_accuracy']:.1f} %, "
              f"{doc['seconds']:.0f} s, sha256 {doc['sha256'][:12]}")
    return 0


def model_overrides(pairs: list[str] | None) -> dict[str, object]:
    """``--set KEY=VALUE`` pairs as model overrides (dotted paths into the preset's config, as a table row's):
    each VALUE read as JSON (``8``, ``true``, ``null``, ``[2, 3, 4]``), else kept as a string (``exp``)."""
    overrides: dict[str, object] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ReplicateError(f"--set {pair!r}: expected KEY=VALUE, e.g. --set task_split.stride=8")
        try:
            overrides[key] = json.loads(value)
        except json.JSONDecodeError:
            overrides[key] = value
    return overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from .engine.config import with_overrides
    from .engine.distributed import init_distributed, is_main
    from .engine.train import train
    from .profiles import schedule_for

    cfg = with_overrides(
        schedule_for(args.profile), scale_schedule=args.scale_schedule, iters=args.iters,
        batch_size=args.batch_size, lr=args.lr, seed=args.seed, amp=args.amp, num_workers=args.workers,
        checkpoint_every=args.checkpoint_every, eval_at_end=False if args.no_eval else None,
    )
    init_distributed()
    result = train(args.model, args.profile, args.out, cfg, data_root=args.data_root, device=args.device,
                   progress=not args.quiet, overrides=model_overrides(args.set))
    if is_main():
        line = f"status: {result['status']}  iteration: {result['iteration']}/{cfg.iters}"
        if result.get("metrics"):
            line += f"  AP: {100 * result['metrics']['AP']:.1f}  AP50: {100 * result['metrics']['AP50']:.1f}"
        print(line)
        print(f"metrics: {result['metrics_file']}" if "metrics_file" in result else f"checkpoint: {result['checkpoint']}")
    return 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .models.zoo import MODELS, describe

    width = max(map(len, MODELS))
    for name in MODELS:
        print(f"{name:<{width}}  {describe(name)}")
    return 0


def _cmd_bench_train_step(args: argparse.Namespace) -> int:
    from .bench.train_step import bench_train_step, format_result, write_result

    h, w = _parse_size(args.size)
    for model in args.model:
        result = bench_train_step(model, batch_size=args.batch_size, size=(h, w), iters=args.iters,
                                  warmup=args.warmup, num_classes=args.num_classes, device=args.device,
                                  amp=args.amp, channels_last=args.channels_last, gn_nchw=args.gn_nchw)
        print(format_result(result))
        if not args.no_save:
            print(f"  written to {write_result(result, args.out if len(args.model) == 1 else None)}")
    return 0


def _cmd_bench_aps(args: argparse.Namespace) -> int:
    from .bench.aps import bench_aps, format_result, write_result

    result = bench_aps(images=args.images, boxes_per_image=args.boxes_per_image, iters=args.iters,
                       warmup=args.warmup, device=args.device, score=args.score)
    print(format_result(result))
    if not result["identical"]:
        print(f"WARNING: assignments differ for {result['differing_gts']} GTs")
    if not args.no_save:
        print(f"  written to {write_result(result, args.out)}")
    return 0


def _cmd_bench_data(args: argparse.Namespace) -> int:
    from .bench.cost import bench_data, write_result

    result = bench_data(args.profile)
    print(f"data {args.profile}: generated in {result['seconds']:.1f} s")
    if not args.no_save:
        print(f"  written to {write_result(result, args.out)}")
    return 0


def _cmd_bench_norm(args: argparse.Namespace) -> int:
    from .bench.norm import bench_norm, format_result
    from .io import atomic_write_json

    result = bench_norm(iters=args.iters, threads=args.threads)
    print(format_result(result))
    if not args.no_save:
        path = args.out or Path("results") / "bench" / "norm_cpu.json"
        print(f"  written to {atomic_write_json(path, result, indent=1)}")
    return 0


def _cmd_bench_dcn(args: argparse.Namespace) -> int:
    from .bench.dcn import bench_dcn, format_result
    from .io import atomic_write_json

    result = bench_dcn(batch_size=args.batch_size, iters=args.iters, threads=args.threads)
    print(format_result(result))
    if not args.no_save:
        path = args.out or Path("results") / "bench" / "dcn_cpu.json"
        print(f"  written to {atomic_write_json(path, result, indent=1)}")
    return 0


def _cmd_bench_threads(args: argparse.Namespace) -> int:
    from .bench.cost import bench_threads, write_result

    result = bench_threads(args.model, args.profile, iters=args.iters, data_root=args.data_root,
                           overrides=model_overrides(args.set))
    for name in ("1x2", "2x1"):
        r = result[name]
        print(f"{name} ({r['runs']} run(s) x {r['threads']} thread(s)): s/iter "
              + ", ".join(f"{s:.3f}" for s in r["seconds_per_iter"]) + f"; machine {r['machine_imgs_per_s']:.1f} img/s")
    print(f"more runs per hour: {result['faster']}")
    if not args.no_save:
        print(f"  written to {write_result(result, args.out)}")
    return 0


def _cmd_bench_eval(args: argparse.Namespace) -> int:
    from .bench.eval import bench_eval, format_result, write_result

    result = bench_eval(images=args.images, dets_per_image=args.dets_per_image, seed=args.seed)
    print(format_result(result))
    if not args.no_save:
        print(f"  written to {write_result(result, args.out)}")
    return 0


def _cmd_sweep(args: argparse.Namespace) -> int:
    from .experiments.durations import estimator
    from .experiments.runs import stop_file
    from .experiments.sweep import sweep
    from .profiles import schedule_for
    from .provenance import cpu_has_native_bf16, device_name

    if args.executor != "slurm" and schedule_for(args.profile).amp == "bf16" and not cpu_has_native_bf16():
        print(f"warning: profile {args.profile} trains with bf16 autocast, which this CPU ({device_name('cpu')}) "
              "emulates: each run many times slower than on a CPU with native bf16 (AVX-512 BF16 or AMX), and "
              "its numbers not those of the committed records' machines", file=sys.stderr)
    deadline = _deadline(args.until, args.max_minutes)
    if args.fit and deadline is None and not args.dry_run:
        raise ReplicateError("--fit starts only the runs that finish before the deadline: give --until or --max-minutes")
    expected = estimator(args.results, args.profile) if args.fit else None
    stop = stop_file(args.work)
    if stop.exists() and not args.dry_run:
        stop.unlink()  # a new sweep is asked for: an earlier stop request no longer holds
        print(f"removed the stop request {stop}")
    report = sweep(args.target, args.profile, args.executor, args.seeds, cluster=args.cluster,
                   results_dir=args.results, work_dir=args.work, data_root=args.data_root, wait=not args.no_wait,
                   dry_run=args.dry_run, parallelism=args.parallelism, timeout_s=args.timeout,
                   deadline=deadline, expected=expected)
    print(report.format())
    return 1 if report.counts()["failed"] else 0


def _deadline(until: str | None, max_minutes: float | None) -> float | None:
    """``--until HH:MM`` (local time, the next such moment) and ``--max-minutes N`` as a ``time.time()``
    value (the earlier of the two), or ``None``."""
    import datetime as dt
    import time

    ends = []
    if max_minutes is not None:
        ends.append(time.time() + 60 * max_minutes)
    if until is not None:
        try:
            clock = dt.datetime.strptime(until, "%H:%M").time()
        except ValueError:
            raise ReplicateError(f"--until {until!r}: give a local time as HH:MM") from None
        now = dt.datetime.now()
        end = dt.datetime.combine(now.date(), clock)
        if end <= now:
            end += dt.timedelta(days=1)
        ends.append(end.timestamp())
    return min(ends) if ends else None


def _cmd_stop(args: argparse.Namespace) -> int:
    from .experiments.runs import stop_file
    from .io import atomic_write_text

    stop = stop_file(args.work)
    stop.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(stop, "stop requested by `replicate stop`\n")
    print(f"wrote {stop}: the sweeps using {args.work} start no more runs, and their running runs checkpoint "
          "and stop within an iteration (sweep again to resume them)")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from .experiments.verify import save_verification, verify

    exact = True
    for record in args.records:
        result = verify(record, data_root=args.data_root, threads=args.threads, progress=not args.quiet,
                        keep=args.keep)
        print(result.format(), flush=True)
        if args.save:
            print(f"wrote {save_verification(result, args.results)}", flush=True)
        exact &= result.exact
    return 0 if exact else 1


def _cmd_status(args: argparse.Namespace) -> int:
    from .experiments.runs import unfinished_runs
    from .experiments.store import ResultsStore

    store = ResultsStore(args.results)
    rows = [(r["profile"], r["key"], r["model"], str(r["seed"]), "finished",
             f"{100 * r['metrics']['AP']:.1f}" if (r.get("metrics") or {}).get("AP") is not None else "-",
             r["provenance"].get("finished", "-")) for r in store.records(args.profile)]
    rows += [(r["profile"], r["key"], r["model"], str(r["seed"]), f"at {r['iteration']}/{r['iters']}", "-",
              r["updated"]) for r in unfinished_runs(args.work, store, args.profile)]
    if not rows:
        print(f"no runs in {args.results} or {args.work}/runs")
        return 0
    print(_text_table(("profile", "key", "model", "seed", "status", "AP", "updated"), rows))
    return 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .experiments.sweep import load_papers, table_status

    registry = load_papers()
    if not registry:
        print("no paper specs registered")
        return 0
    profiles = [args.profile] if args.profile else list(MAIN_PROFILES)
    rows = []
    for paper in sorted(registry):
        for table in sorted(registry[paper]):
            spec = registry[paper][table]
            statuses = [dict(table_status(spec, p, args.seeds, results_dir=args.results)) for p in profiles]
            rows += [(paper, table, row.label, *(st[row.label] for st in statuses)) for row in spec.rows]
    print(_text_table(("paper", "table", "row", *profiles), rows))
    return 0


def _text_table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]
    return "\n".join("  ".join(str(x).ljust(w) for x, w in zip(row, widths)).rstrip() for row in [header, *rows])


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ReplicateError(f"--size must look like HxW (e.g. 512x512), got {text!r}") from None
    return h, w


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="replicate",
        description="Reference replication of the classification/localization misalignment papers.",
    )
    parser.add_argument("--version", action="version", version=f"replicate {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="generate, check and describe datasets")
    dsub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")

    p = dsub.add_parser("synth", help="generate the synthetic misalignment benchmark (COCO format)")
    p.add_argument("--profile", choices=GENERATED, default=DEFAULT_PROFILE,
                   help="smoke: tiny, for tests; proxy: the CPU benchmark of the book (default); synthetic: the larger "
                        "GPU benchmark")
    p.add_argument("--out", type=Path, required=True, help="output folder (annotations/ and images/ go here)")
    p.add_argument("--seed", type=int, default=0, help="same seed => byte-identical annotation files (default 0)")
    p.add_argument("--workers", type=int, default=None, help="processes (default: up to 2)")
    p.add_argument("--overwrite", action="store_true", help="regenerate even if complete output exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_data_synth)

    p = dsub.add_parser("check", help="validate a COCO annotation file and report every problem")
    p.add_argument("annotations", type=Path, help="COCO instances JSON")
    p.add_argument("--images", type=Path, default=None, help="image folder: also check that the files exist")
    p.add_argument("--check-sizes", action="store_true", help="also open each image and compare its size")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=_cmd_data_check)

    p = dsub.add_parser("stats", help="dataset-card statistics of COCO annotation files")
    p.add_argument("annotations", type=Path, nargs="+", help="COCO instances JSON file(s)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_data_stats)

    p = sub.add_parser("eval", help="COCO evaluation of a detection results file")
    p.add_argument("gt", type=Path, help="ground truth: COCO instances JSON")
    p.add_argument("dets", type=Path, help="detections: COCO results JSON (a list of dicts)")
    p.add_argument("--iou-type", choices=["bbox", "segm"], default="bbox")
    p.add_argument("--backend", choices=["pycocotools", "faster-coco-eval"], default="pycocotools",
                   help="COCOeval implementation: pycocotools (the reference, default) or faster-coco-eval (optional "
                        "package, the same stats to 1e-12 on the parity cases, ~9x faster on a COCO-sized file)")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl")
    p.add_argument("--all", action="store_true", help="with --json: add AP at IoU 0.5..0.9 per object size")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("book", help="execute the book's notebooks with papermill and build the HTML book")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=DEFAULT_PROFILE)
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default data/PROFILE)")
    p.add_argument("--jobs", type=int, default=2, help="notebooks executed in parallel (default 2)")
    p.add_argument("--only", nargs="*", default=None, help="execute only notebooks whose path contains one of these")
    p.add_argument("--executor", choices=["local", "slurm", "debug"], default=None,
                   help="where table notebooks launch their missing runs (default: the notebooks' own)")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 per table row (default: the notebooks' own)")
    p.add_argument("--run-missing", action=argparse.BooleanOptionalAction, default=None,
                   help="train the runs the results store lacks (default: only on the smoke profile; the other "
                        "profiles' runs are produced with `replicate sweep` and proxy's are committed)")
    p.set_defaults(func=_cmd_book)

    p = sub.add_parser(
        "pretrain", help="pretrain a narrow backbone on a generated profile's training objects",
        description="Pretrain the narrow ResNet(s) on crops of the profile's training-split objects (10-way key "
                    "classification; the validation split is never read), the stand-in for ImageNet "
                    "initialisation. Writes OUT/<backbone>.pt and OUT/<backbone>.json (what it was trained on, "
                    "accuracy, provenance). The profile (replicate/profiles.py) names the files its presets load.")
    p.add_argument("--profile", choices=GENERATED, default=DEFAULT_PROFILE)
    p.add_argument("--backbone", nargs="+", choices=["narrow", "narrow_deep"], default=["narrow", "narrow_deep"])
    p.add_argument("--out", type=Path, default=None, help="output folder (default results/pretrained/PROFILE)")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default data/PROFILE)")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--zero-init-residual", action=argparse.BooleanOptionalAction, default=None,
                   help="start each residual block as the identity (default: as the profile's weights were made: "
                        "on for narrow_deep, off for narrow)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--ensure", action="store_true",
                   help="make nothing new: re-make the weights files the profile's presets load that are absent, "
                        "from their committed records, and fail (exit 1) unless each hashes to its record's SHA-256")
    p.set_defaults(func=_cmd_pretrain)

    p = sub.add_parser(
        "train", help="train a detector and evaluate it on the val split",
        description="Train a detector (see `replicate models`) with its profile's schedule (smoke, proxy, "
                    "synthetic, or 1x for coco) and evaluate it. OUT receives log.jsonl, checkpoint.pt, detections.json and "
                    "metrics.json; a run finding OUT/checkpoint.pt resumes from it. SIGTERM/SIGUSR2 checkpoint "
                    "and stop. Multi-GPU: python -m torch.distributed.run --nproc_per_node N -m replicate.cli "
                    "train ... (or srun under SLURM); --batch-size is the global batch.")
    p.add_argument("--model", required=True, help="detector preset name (see `replicate models`)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field of the preset's config (dotted path, JSON value; repeatable), e.g. "
                        "--set task_split.stride=8 --set head.roi.sibling=false")
    p.add_argument("--profile", choices=PROFILE_NAMES, required=True, help="data profile")
    p.add_argument("--out", type=Path, required=True, help="output folder")
    p.add_argument("--iters", type=int, default=None, help="training iterations (default: the profile's schedule)")
    p.add_argument("--scale-schedule", action="store_true",
                   help="with --iters: scale the lr steps and warmup to the new length (default: keep them)")
    p.add_argument("--batch-size", type=int, default=None, help="global batch size over all processes")
    p.add_argument("--lr", type=float, default=None, help="base learning rate")
    p.add_argument("--seed", type=int, default=None, help="seed of initialisation, data order and augmentation")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default data/PROFILE)")
    p.add_argument("--device", choices=["cpu", "cuda"], default=None, help="default: cuda if available")
    p.add_argument("--amp", choices=["bf16", "fp16"], default=None, help="mixed precision (CUDA only)")
    p.add_argument("--workers", type=int, default=None, help="data loading processes per training process")
    p.add_argument("--checkpoint-every", type=int, default=None, help="iterations between checkpoints (0: end only)")
    p.add_argument("--no-eval", action="store_true", help="skip the evaluation on the val split")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("models", help="list the detector presets")
    p.set_defaults(func=_cmd_models)

    bench = sub.add_parser("bench", help="benchmarks (speed, memory); never part of the tests")
    bsub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCHMARK")
    p = bsub.add_parser("train-step", help="time our R50-FPN training step against torchvision's on one batch",
                        description="Median time of forward + loss + backward + SGD step of our detector and of "
                                    "torchvision's retinanet_resnet50_fpn / fcos_resnet50_fpn on the same batch; "
                                    "prints the ratio ours/torchvision and writes the figures with provenance "
                                    "to results/bench/ for the book's performance appendix.")
    p.add_argument("--model", nargs="+", default=["retinanet", "fcos"], choices=["retinanet", "fcos"])
    p.add_argument("--batch-size", type=int, default=2)
    p.add_argument("--size", default="512x512", help="input HxW (default 512x512; the papers use 800x1333)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=2, help="untimed iterations first")
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--amp", choices=["bf16", "fp16"], help="autocast dtype (fp16: CUDA only)")
    p.add_argument("--channels-last", action="store_true", help="NHWC weights and images")
    p.add_argument("--gn-nchw", action="store_true",
                   help="our GroupNorms computed in NCHW under --channels-last (the proxy profile's gn_nchw)")
    p.add_argument("--out", type=Path, help="result file (default results/bench/train-step_<model>_<device>.json)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(func=_cmd_bench_train_step)
    p = bsub.add_parser("aps", help="time our batched APS assignment against the released per-GT scikit-learn loop",
                        description="Median time of MOD's Aligned Points Sampler on a synthetic COCO-like batch "
                                    "(IMAGES x BOXES_PER_IMAGE GTs over the 22,300 points of an 800x1333 image): "
                                    "the released code's per-GT NumPy + scikit-learn loop (device-to-host copy "
                                    "included) against the batched aps_select. Prints the speedup, checks that both "
                                    "select the same points for every GT, and writes the figures with provenance "
                                    "to results/bench/.")
    p.add_argument("--images", type=int, default=16, help="images in the batch (default 16)")
    p.add_argument("--boxes-per-image", type=int, default=7, help="GT boxes per image (default 7, COCO's mean)")
    p.add_argument("--iters", type=int, default=5, help="timed iterations (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed iterations first")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda if available")
    p.add_argument("--score", choices=["paper", "code"], default="paper",
                   help="APS score: paper (Eqs. 6-8, default) or code (the released code's)")
    p.add_argument("--out", type=Path, help="result file (default results/bench/aps_<score>_<device>.json)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(func=_cmd_bench_aps)

    p = bsub.add_parser("data", help="time generating a profile's dataset from scratch",
                        description="Seconds to generate the profile's train and val splits into a fresh folder.")
    p.add_argument("--profile", choices=GENERATED, default=DEFAULT_PROFILE)
    p.add_argument("--out", type=Path, help="result file (default results/bench/data_<profile>.json)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(func=_cmd_bench_data)

    p = bsub.add_parser("norm", help="GroupNorm by memory layout and dtype: the proxy's gn_nchw lever",
                        description="Forward + backward of GroupNorm on the heads' shapes, NCHW against channels-last "
                                    "inputs (float32 and bf16), and our NCHW path for channels-last inputs.")
    p.add_argument("--iters", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="result file (default results/bench/norm_cpu.json)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(func=_cmd_bench_norm)

    p = bsub.add_parser("dcn", help="deformable convolution on CPU: our sampled form against torchvision's op",
                        description="Forward + backward of AlignDet's 7x7 RoIConv and of a 3x3 deformable convolution "
                                    "on the proxy's P3 map: our grid_sample form (float32 and bf16 autocast) against "
                                    "torchvision.ops.deform_conv2d (float32), with the largest output difference.")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--iters", type=int, default=5)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, help="result file (default results/bench/dcn_cpu.json)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(func=_cmd_bench_dcn)

    p = bsub.add_parser("threads", help="1 run x 2 threads against 2 runs x 1 thread: which trains more per hour",
                        description="Training throughput of one preset on this machine: one run with two threads, "
                                    "then two runs side by side with one thread each. Run it on an idle machine.")
    p.add_argument("--model", default="atss")
    p.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a field of the preset's config, as `replicate train --set` (repeatable)")
    p.add_argument("--profile", choices=GENERATED, default=DEFAULT_PROFILE)
    p.add_argument("--iters", type=int, default=150, help="iterations per run (the first 30 are not timed)")
    p.add_argument("--data-root", default=None, help="dataset folder (default data/PROFILE)")
    p.add_argument("--out", type=Path, help="result file (default results/bench/threads_<profile>_<model>.json, "
                                             "with the --set pairs appended to the name)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(func=_cmd_bench_threads)

    p = bsub.add_parser("eval", help="pycocotools against faster-coco-eval on a COCO-sized result file",
                        description="Seconds of COCO evaluation with each backend on a synthetic problem the size of "
                                    "COCO val2017 (5,000 images, 80 categories, ~36,500 objects, 100 detections per "
                                    "image), their ratio, and the largest difference between their stats.")
    p.add_argument("--images", type=int, default=5000, help="images (default 5000, COCO val2017's)")
    p.add_argument("--dets-per-image", type=int, default=100, help="detections per image (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="result file (default results/bench/eval_cpu.json)")
    p.add_argument("--no-save", action="store_true", help="print only")
    p.set_defaults(func=_cmd_bench_eval)

    p = sub.add_parser(
        "sweep", help="run every missing run of a paper or of one of its tables (submitit: local, slurm, debug)",
        description="Make the runs of TARGET (PAPER, e.g. mod, or PAPER:TABLE, e.g. mod:table3, or several of them "
                    "comma-separated, in priority order: mod:table2,mod:table1): one per reproduced "
                    "row and seed, a run shared by several tables once. Runs already in the results store are "
                    "skipped; the others are submitted as one job array and waited for. Training runs in "
                    "WORK/runs/PROFILE/KEY/ and resumes from its checkpoint when interrupted or requeued; a finished "
                    "run is recorded in RESULTS/PROFILE/KEY.json. Exit status 1 if a run failed.")
    p.add_argument("target", metavar="TARGET",
                   help="PAPER or PAPER:TABLE, or several comma-separated (see `replicate list`)")
    p.add_argument("--profile", choices=PROFILE_NAMES, required=True, help="data profile")
    p.add_argument("--executor", choices=["local", "slurm", "debug"], default="local",
                   help="local: subprocesses on this machine (default); slurm: a SLURM job array; "
                        "debug: in this process, one run after the other")
    p.add_argument("--seeds", type=int, default=1,
                   help="seeds 0..N-1 per row (default 1); a one-seed check table (benchmark:precision) caps it")
    p.add_argument("--cluster", default=None,
                   help="with --executor slurm: a cluster profile, a name from slurm/clusters/ or a YAML file "
                        "(partition, account, GPUs, time limit, ...)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store (default results/)")
    p.add_argument("--work", type=Path, default=Path("work"), help="work folder: runs/ and submitit/ (default work/)")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default data/PROFILE)")
    p.add_argument("--parallelism", type=int, default=None,
                   help="runs at once (default: 1 locally, the cluster profile's array limit on SLURM)")
    p.add_argument("--timeout", type=float, default=None, help="stop waiting after this many seconds (runs go on)")
    p.add_argument("--no-wait", action="store_true", help="submit and return (slurm only); sweep again to collect")
    p.add_argument("--until", default=None, metavar="HH:MM",
                   help="clean stop at this local time: no run starts after it, running ones checkpoint and stop "
                        "(sweep again to resume them)")
    p.add_argument("--max-minutes", type=float, default=None, help="clean stop after this many minutes (as --until)")
    p.add_argument("--fit", action="store_true",
                   help="with --until or --max-minutes: start only the runs expected to finish before it with 20%% "
                        "to spare (the median time of the profile's recorded runs most like it: other seeds of the "
                        "run, else the same detector, backbone and schedule; for the iterations left), so that a "
                        "machine stopping then loses no half-trained run; with "
                        "--dry-run: each missing run's expected time and their total")
    p.add_argument("--dry-run", action="store_true", help="print what would run; submit nothing")
    p.set_defaults(func=_cmd_sweep)

    p = sub.add_parser(
        "verify", help="re-train committed records' runs and check that they reproduce their metrics exactly",
        description="For each RECORD (results/<profile>/<key>.json): find the table row whose run has its key, check "
                    "that the row's config is the record's, train it from scratch in a scratch folder and compare "
                    "every COCO metric with the stored one. Exit 1 when any differs.")
    p.add_argument("records", nargs="+", type=Path, metavar="RECORD")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default data/PROFILE)")
    p.add_argument("--threads", type=int, default=None,
                   help="intra-op threads (default: the record's own, or 1, as the sweeps run, for a record that "
                        "does not say)")
    p.add_argument("--save", action="store_true",
                   help="write each outcome to RESULTS/verifications/<profile>/<key>.json, where the book's "
                        "provenance page lists it")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store for --save (default results)")
    p.add_argument("--keep", action="store_true",
                   help="train in the record's own run folder (its work_dir) and keep the run there, so that the "
                        "figures' analyses can read its checkpoint (refused when that folder holds one already)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_verify)

    p = sub.add_parser("stop", help="stop the sweeps using a work folder cleanly (their runs checkpoint)",
                       description="Ask every sweep using WORK to stop as at its deadline: no run starts any more, "
                                   "running runs checkpoint and stop within an iteration, not requeued. The request "
                                   "is the file WORK/STOP; `replicate sweep` removes it when it starts, and resumes "
                                   "the stopped runs from their checkpoints.")
    p.add_argument("--work", type=Path, default=Path("work"), help="work folder (default work/)")
    p.set_defaults(func=_cmd_stop)

    p = sub.add_parser("status", help="the runs in the results store and the unfinished ones in the work folder",
                       description="One line per recorded run (AP, when it finished) and per run with a work "
                                   "folder but no record yet (the last iteration logged, when the log last changed).")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="only this profile")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store (default results/)")
    p.add_argument("--work", type=Path, default=Path("work"), help="work folder (default work/)")
    p.set_defaults(func=_cmd_status)

    p = sub.add_parser("list", help="every paper, table and row with its status per data profile",
                       description="Every registered paper table and row, with per profile 'finished n/N' (seeds "
                                   "recorded in the results store), 'missing' or 'cited only' (not reproduced).")
    p.add_argument("--profile", choices=PROFILE_NAMES, default=None, help="only this profile")
    p.add_argument("--seeds", type=int, default=1, help="seeds counted per row (default 1)")
    p.add_argument("--results", type=Path, default=Path("results"), help="results store (default results/)")
    p.set_defaults(func=_cmd_list)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"replicate: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    warnings.showwarning = _show_warning
    try:
        return args.func(args)
    except ReplicateError as exc:
        print(f"replicate: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("replicate: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
