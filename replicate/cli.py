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

    metrics = evaluate_files(args.gt, args.dets, iou_type=args.iou_type)
    if args.json:
        keys = metrics if args.all else SUMMARY_KEYS
        print(json.dumps({k: metrics[k] for k in keys}))
    else:
        print(format_summary(metrics))
    return 0


def _cmd_book(args: argparse.Namespace) -> int:
    from .book.build import build_book

    index = build_book(profile=args.profile, data_root=args.data_root, jobs=args.jobs, only=args.only)
    print(f"book built: {index}")
    return 0


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
    p.add_argument("--profile", choices=["smoke", "synthetic"], default="synthetic",
                   help="smoke: tiny, for tests; synthetic: the default benchmark (default)")
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
    p.add_argument("--json", action="store_true",
                   help="print one JSON object with AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl")
    p.add_argument("--all", action="store_true", help="with --json: add AP at IoU 0.5..0.9 per object size")
    p.set_defaults(func=_cmd_eval)

    p = sub.add_parser("book", help="execute the book's notebooks with papermill and build the HTML book")
    p.add_argument("--profile", choices=["smoke", "synthetic", "coco"], default="synthetic")
    p.add_argument("--data-root", type=Path, default=None, help="dataset folder (default data/PROFILE)")
    p.add_argument("--jobs", type=int, default=2, help="notebooks executed in parallel (default 2)")
    p.add_argument("--only", nargs="*", default=None, help="execute only notebooks whose path contains one of these")
    p.set_defaults(func=_cmd_book)
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
