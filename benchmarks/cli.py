"""``posthoc-bench``: evaluate a teacher alone and with posthoc's structure constraints.

Examples::

    posthoc-bench smiyc --teacher obsnet                      # synthetic world, both tracks
    posthoc-bench smiyc --track anomaly --data-root ~/data/smiyc --teacher my_model.onnx
    posthoc-bench laf --subset noknown --data-root ~/data/LostAndFound --teacher sml
    posthoc-bench speed ...                                   # kernel speed benchmark
    posthoc-bench metrics-speed ...                           # metric speed benchmark
    posthoc-bench speed-superpixels ...                       # superpixel proposals: ximgproc vs skimage
    posthoc-bench summary runs/x/results.json                 # one table across tracks
    torchrun --standalone --nproc-per-node=4 -m posthoc.bench smiyc ...   # one run over 4 processes
    posthoc-bench smiyc ... --shard 1/3 --out runs/s1          # shard 1 of 3 (e.g. a Slurm array task)
    posthoc-bench merge runs/s0 runs/s1 runs/s2 --out runs/all # the three shards as one run

Without ``--data-root`` (and without ``$POSTHOC_DATA_ROOT`` / ``$POSTHOC_SMIYC_ROOT``),
``smiyc`` and ``streethazards`` run on the synthetic world (generated on first use) and say so
in the table title. The table goes to stdout; logs and progress bars go to stderr.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from posthoc.errors import PosthocError

from . import _omp  # sets OMP_WAIT_POLICY=PASSIVE (unless set) before anything imports torch

__all__ = ["build_parser", "main"]

log = logging.getLogger(__name__)

_DELEGATES = {
    "speed": "posthoc.bench.speed",
    "metrics-speed": "posthoc.bench.metrics_speed",
    "speed-meanshift": "posthoc.bench.speed_meanshift",
    "speed-superpixels": "posthoc.bench.speed_superpixels",
}


def _csv(s: str) -> list[str]:
    return [x.strip() for x in s.split(",") if x.strip()]


def _add_common(p: argparse.ArgumentParser, *, split_default: str = "test") -> None:
    from .runner import VARIANTS

    p.add_argument(
        "--teacher",
        default="obsnet",
        help="teacher registry name, a model.onnx path, or a folder of precomputed maps (<frame id>.hdf5/.npy); "
        "a comma-separated list runs several (default: obsnet)",
    )
    p.add_argument("--weights", default=None, help="weights of the (single) teacher: PATH or role=PATH,role=PATH")
    p.add_argument(
        "--proposals",
        default=None,
        help="proposal sources, comma-separated (default: csl,superpixels when the CSL net is bundled, "
        "else superpixels)",
    )
    p.add_argument("--superpixels-impl", default=None, choices=("auto", "ximgproc", "skimage"),
                   help="implementation of the superpixels source: auto (default: OpenCV-contrib ximgproc), "
                   "ximgproc, or skimage (scikit-image, the reference)")
    p.add_argument(
        "--data-root", default=None, help="data-set root (default: $POSTHOC_DATA_ROOT or the per-data-set variable)"
    )
    p.add_argument(
        "--split", default=split_default, help=f"split (synthetic world: train/val/test; default {split_default})"
    )
    p.add_argument(
        "--subset",
        default=None,
        help="official subset (smiyc: all|validation|test; laf: test|noknown|train; fishyscapes: laf|static)",
    )
    p.add_argument("--device", default=None, help="device for teachers and proposals, e.g. cpu or cuda:0")
    p.add_argument("--batch-size", type=int, default=2, help="frames per teacher call (default 2)")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N frames")
    p.add_argument("--seed", type=int, default=0, help="random seed of the run (default 0)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world (default 0)")
    p.add_argument(
        "--out", default=None,
        help="run folder (default runs/<track>-<teacher>-<timestamp>); rerun with the same folder to resume"
    )
    p.add_argument("--variants", default=None,
                   help=f"subset of {','.join(VARIANTS)} (default: all that can run; a peer named here that "
                        "cannot run is an error)")
    p.add_argument("--sam-checkpoint", default=None, help="SAM weights (sam_vit_*.pth) for the 'ugains' variant")
    p.add_argument("--sam-model-type", default="vit_b", help="SAM model type of --sam-checkpoint (default vit_b)")
    p.add_argument(
        "--metric-mode", default="smiyc", choices=("smiyc", "exact"), help="pixel-metric mode (default smiyc)"
    )
    p.add_argument(
        "--export-smiyc", default=None, metavar="DIR", help="also write official SMIYC submission files to DIR"
    )
    p.add_argument("--overlays", type=int, default=3, help="qualitative overlays per teacher and data set (default 3)")
    p.add_argument("--no-plots", action="store_true", help="skip PR/ROC curves and overlays")
    p.add_argument("--no-cache", action="store_true",
                   help="one-shot run: maps go to a scratch folder deleted at the end (nothing kept in --out/cache; "
                   "no resume)")
    p.add_argument(
        "--strict",
        action="store_true",
        help="a frame whose label file is missing (while others have theirs) is an error, not a warning",
    )
    p.add_argument(
        "--threshold-dtype",
        default="float64",
        choices=("float64", "float16"),
        help="component metrics' threshold comparison: float64 (numpy >= 2, default) or float16 "
        "(reproduces the official SMIYC server, which runs numpy 1.x)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only on stderr")
    p.add_argument(
        "--shard", default=None, metavar="I/N",
        help="evaluate only shard I of N (contiguous blocks of frames) and save its metric states in the run "
        "folder; combine the N run folders with 'posthoc-bench merge'. Under torchrun each rank is a shard already",
    )


def _add_panoptic(sub) -> None:
    from .panoptic_track import PANOPTIC_VARIANTS

    p = sub.add_parser("coco-panoptic", help="open-set panoptic: COCO panoptic with 5/10/20 %% unknown thing classes "
                       "(synthetic world without --data-root)")
    p.add_argument("--unknown", type=int, default=5, choices=(5, 10, 20), help="unknown split in %% (default 5)")
    p.add_argument("--teacher", default="obsnet", help="anomaly teacher with semantic logits (default obsnet)")
    p.add_argument("--weights", default=None, help="weights of the teacher")
    p.add_argument("--proposals", default=None, help="proposal source (default: csl when bundled, else superpixels)")
    p.add_argument("--data-root", default=None, help="COCO root in the panopticapi layout (default: synthetic world)")
    p.add_argument("--split", default=None, help="split (default val2017; synthetic world: test)")
    p.add_argument("--device", default=None, help="device for the teacher and proposals")
    p.add_argument("--limit", type=int, default=None, help="evaluate only the first N frames")
    p.add_argument("--val-limit", type=int, default=None, help="val frames for the threshold (default --limit)")
    p.add_argument("--seed", type=int, default=0, help="random seed (clustering) (default 0)")
    p.add_argument("--world-seed", type=int, default=0, help="seed of the synthetic world (default 0)")
    p.add_argument("--out", default=None, help="run folder (default runs/coco-panoptic-<teacher>-<timestamp>)")
    p.add_argument("--variants", default=",".join(PANOPTIC_VARIANTS),
                   help=f"subset of {','.join(PANOPTIC_VARIANTS)} (default: all)")
    p.add_argument("--threshold", type=float, default=None,
                   help="anomaly threshold of the unknown class (default: best pixel F1 on the val split)")
    p.add_argument("--min-area", type=int, default=16, help="minimum instance/segment area in pixels (default 16)")
    p.add_argument("--delta-d", type=float, default=0.5, help="clustering: merge distance of cluster means")
    p.add_argument("--export-panoptic", default=None, metavar="DIR",
                   help="write predictions and the open-set GT in the panopticapi format to DIR")
    p.add_argument("--quiet", action="store_true", help="no progress bars, warnings only on stderr")


def _panoptic(args: argparse.Namespace) -> int:
    from .panoptic_track import PanopticConfig, run_panoptic

    cfg = PanopticConfig(
        teacher=args.teacher, weights=args.weights, proposals=args.proposals, data_root=args.data_root,
        split=args.split, unknown=args.unknown, device=args.device, limit=args.limit, val_limit=args.val_limit,
        seed=args.seed, world_seed=args.world_seed, out=args.out, variants=_csv(args.variants),
        threshold=args.threshold, min_area=args.min_area, delta_d=args.delta_d,
        export_panoptic=args.export_panoptic, progress=not args.quiet,
    )
    try:
        results = run_panoptic(cfg)
    except (PosthocError, ValueError, OSError, KeyError) as e:
        log.debug("run failed", exc_info=True)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"posthoc-bench: error: {msg}", file=sys.stderr)
        return 2
    print(results["markdown"])
    print(f"results: {Path(results['config']['out']) / 'results.json'}", file=sys.stderr)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="posthoc-bench",
        description="Benchmark a teacher alone and with posthoc (CSL2 fusion, refinement, offsets) "
        "on road-anomaly data sets.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("smiyc", help="SegmentMeIfYouCan anomaly/obstacle tracks (synthetic world without --data-root)")
    p.add_argument("--track", default="both", choices=("anomaly", "obstacle", "both"), help="track (default both)")
    _add_common(p)
    for name, helptext in (
        ("road-anomaly", "Road Anomaly (Lis et al. 2019)"),
        ("laf", "LostAndFound test / NoKnown (--subset noknown)"),
        ("fishyscapes", "Fishyscapes LostAndFound / Static (--subset static)"),
        ("streethazards", "StreetHazards test (+ open-set miou_known / open_miou; synthetic world without "
                          "--data-root)"),
    ):
        sp = sub.add_parser(name, help=helptext)
        _add_common(sp)
        if name == "streethazards":
            sp.add_argument("--open-threshold", type=float, default=None,
                            help="anomaly threshold of the unknown class for open_miou (default: 95 %% TPR on the "
                            "validation split)")
    from .semantic_track import SEMANTIC_VARIANTS

    for name, helptext in (
        ("cityscapes", "Cityscapes semantic segmentation, DA (synthetic target domain without --data-root)"),
        ("acdc", "ACDC semantic segmentation, DA (--subset fog|night|rain|snow)"),
        ("dark-zurich", "Dark Zurich semantic segmentation, DA"),
        ("coco-stuff", "COCO-Stuff zero-shot (ZegFormer 156 seen / 15 unseen)"),
        ("pascal-voc", "PASCAL VOC zero-shot (ZegFormer 15 seen / 5 unseen)"),
    ):
        pp = sub.add_parser(name, help=helptext)
        _add_common(pp, split_default="val")
        pp.set_defaults(teacher=None, variants=None)  # per track: daformer / zegformer; all semantic variants
        pp.add_argument("--export-pseudo-labels", default=None, metavar="DIR",
                        help="write the chosen variant's class map (PNG, 255 = low confidence) and a float16 "
                        "confidence map per frame to DIR")
        pp.add_argument("--pseudo-threshold", default="0.9",
                        help="pseudo-label confidence: a fixed value (0.9) or top:P (each class keeps its most "
                        "confident P %% of pixels)")
        pp.add_argument("--pseudo-variant", default=None,
                        help=f"variant exported as pseudo-labels (default csl2@<first source>); variants: "
                        f"{','.join(SEMANTIC_VARIANTS)}")
    _add_panoptic(sub)
    ps = sub.add_parser("summary", help="one markdown table across the tracks of a run's results.json")
    ps.add_argument("results", help="results.json of a posthoc-bench run (or its run folder)")
    ps.add_argument("--metrics", default=None, help="comma list of metric keys (default ap,fpr95,siou_gt,f1_mean)")
    ps.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS)
    pm = sub.add_parser("merge", help="add the metric states of --shard I/N runs into one run's results")
    pm.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders of the shards 0..N-1 (any order)")
    pm.add_argument("--out", required=True, help="folder for the merged results.json, tables and plots")
    pm.add_argument("--no-plots", action="store_true", help="skip PR/ROC curves and overlays")
    pm.add_argument("--quiet", action="store_true", help="warnings only on stderr")
    sub.add_parser("speed", help="kernel speed benchmark (posthoc.bench.speed; its own flags follow)", add_help=False)
    sub.add_parser(
        "metrics-speed",
        help="metric speed benchmark (posthoc.bench.metrics_speed; its own flags follow)",
        add_help=False,
    )
    sub.add_parser(
        "speed-meanshift",
        help="mean-shift speed per level, lines against directions (posthoc.bench.speed_meanshift; its own flags)",
        add_help=False,
    )
    sub.add_parser("speed-superpixels", add_help=False,
                   help="superpixel proposal speed, ximgproc vs skimage (posthoc.bench.speed_superpixels; own flags)")
    return parser


def _setup_logging(quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.INFO
    root = logging.getLogger()
    if not any(getattr(h, "_posthoc_cli", False) for h in root.handlers):
        h = logging.StreamHandler(sys.stderr)
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
        h._posthoc_cli = True  # type: ignore[attr-defined]
        root.addHandler(h)
    root.setLevel(level)
    for handler in root.handlers:
        if getattr(handler, "_posthoc_cli", False):
            handler.setLevel(level)
            if isinstance(handler, logging.StreamHandler) and handler.stream is not sys.stderr:
                handler.stream = sys.stderr  # main() called again with another stderr (tests, notebooks); no flush of
                # the old one, which may be closed


def _delegate(command: str, rest: list[str]) -> int:
    import importlib

    modname = _DELEGATES[command]
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            print(f"posthoc-bench {command}: {modname} is not installed in this build", file=sys.stderr)
            return 2
        raise
    rc = mod.main(rest)
    return int(rc or 0)


def _summary(args: argparse.Namespace) -> int:
    import json

    from .report import SummaryError, summarize_results

    path = Path(args.results)
    if path.is_dir():
        path = path / "results.json"
    try:
        results = json.loads(path.read_text())
        print(summarize_results(results, metrics=_csv(args.metrics) if args.metrics else None), end="")
    except FileNotFoundError:
        print(
            f"posthoc-bench summary: error: no results file at {path} (expected a run's results.json)", file=sys.stderr
        )
        return 2
    except json.JSONDecodeError as e:
        print(f"posthoc-bench summary: error: {path} is not valid JSON ({e})", file=sys.stderr)
        return 2
    except SummaryError as e:
        print(f"posthoc-bench summary: error: {path}: {e}", file=sys.stderr)
        return 2
    return 0


def _merge(args: argparse.Namespace) -> int:
    from .merge import merge_runs

    try:
        results = merge_runs([Path(r) for r in args.runs], Path(args.out), plots=not args.no_plots)
    except (PosthocError, ValueError, FileNotFoundError) as e:
        log.debug("merge failed", exc_info=True)
        print(f"posthoc-bench merge: error: {e}", file=sys.stderr)
        return 2
    print(results["markdown"])
    print(f"results: {Path(args.out) / 'results.json'}  table: {Path(args.out) / 'results.md'}", file=sys.stderr)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``posthoc-bench``; returns the process exit code.

    0 = success, 2 = usage error or bad input (the message on stderr says what was
    expected and what came), 1 = unexpected failure.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    # OpenMP threads that spin after every op cost the small per-frame ops of the chain up to
    # 40x on small or shared machines (docs/kernels.md); a user's own setting wins
    _omp.passive_openmp()
    if argv and argv[0] in _DELEGATES:
        _setup_logging("--quiet" in argv)
        return _delegate(argv[0], argv[1:])
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse exits on --help and on usage errors
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    _setup_logging(args.quiet)
    if args.command == "summary":
        return _summary(args)
    if args.command == "merge":
        return _merge(args)
    if args.command == "coco-panoptic":
        return _panoptic(args)
    from .semantic_track import SEMANTIC_DATASETS as _SEM

    if args.command in _SEM:
        from .semantic_track import main_semantic

        return main_semantic(args)

    from . import distributed
    from .runner import VARIANTS, BenchConfig, default_run_dir, run_benchmark

    try:
        shard = distributed.parse_shard(args.shard) if args.shard is not None else None
        scale, device = distributed.setup(shard, args.device)
    except PosthocError as e:
        print(f"posthoc-bench: error: {e}", file=sys.stderr)
        return 2

    if scale.torchrun and not args.out:
        distributed.teardown(scale)
        print("posthoc-bench: error: under torchrun pass --out DIR: every rank must use the same run folder",
              file=sys.stderr)
        return 2
    cfg = BenchConfig(
        dataset=args.command,
        track=getattr(args, "track", "anomaly"),
        subset=args.subset,
        teachers=_csv(args.teacher),
        weights=args.weights,
        proposals=_csv(args.proposals) if args.proposals is not None else None,
        data_root=args.data_root,
        split=args.split,
        device=device,
        batch_size=args.batch_size,
        limit=args.limit,
        seed=args.seed,
        world_seed=args.world_seed,
        out=args.out,
        variants=_csv(args.variants) if args.variants is not None else list(VARIANTS),
        variants_explicit=args.variants is not None,
        sam_checkpoint=args.sam_checkpoint,
        sam_model_type=args.sam_model_type,
        export_smiyc=args.export_smiyc,
        metric_mode=args.metric_mode,
        plots=not args.no_plots,
        cache=not args.no_cache,
        overlays=args.overlays,
        progress=not args.quiet,
        strict=args.strict,
        threshold_dtype=args.threshold_dtype,
        open_threshold=getattr(args, "open_threshold", None),
        superpixels_impl=args.superpixels_impl,
    )
    if cfg.out is None:
        cfg.out = str(default_run_dir(cfg))
    out = cfg.out
    try:
        results = run_benchmark(cfg, scale=scale)
    except (PosthocError, ValueError, OSError, KeyError) as e:
        # OSError: a file the run needs cannot be read or written (the message names it)
        log.debug("run failed", exc_info=True)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        where = f"rank {scale.index}: " if scale.torchrun and not msg.startswith("rank ") else ""
        hint = " (rerun the same command to resume from the cache)" if scale.torchrun else ""
        print(f"posthoc-bench: error: {where}{msg}{hint}", file=sys.stderr)
        return 2
    finally:
        distributed.teardown(scale)
    if not scale.writes_results:
        return 0
    print(results["markdown"])
    print(f"results: {Path(out) / 'results.json'}  table: {Path(out) / 'results.md'}", file=sys.stderr)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
