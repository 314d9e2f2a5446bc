"""``posthoc fuse``: improve one's own model's maps on a folder of images.

    posthoc fuse --model my_model.onnx --images 'photos/*.png' --proposals superpixels --out fused/
    posthoc fuse --teacher obsnet --images photos/ --proposals csl,superpixels --out fused/
    python -m posthoc fuse ...

For each image the command runs the teacher (an ONNX file, or a registered teacher with
``--weights``) and each proposal source once, computes every variant with
:class:`posthoc.Pipeline` (the chain ``posthoc-bench`` reports, see
:mod:`posthoc.bench.variants`), and writes to ``OUT/<image name>/``:

* ``teacher.npy`` / ``teacher.png`` and ``<variant>.npy`` / ``<variant>.png`` per variant
  (e.g. ``csl2+refine-csl.npy``). ``--kind anomaly``: (H,W) float32 anomaly probability in
  [0,1], PNG = inferno heat map. ``--kind semantic``: (K,H,W) float32 class probabilities
  (the teacher's softmax; fused: CSL Eq. 3), PNG = class map of the argmax;
* ``proposals-<source>.npy``: the (H,W) int32 region labels each variant used (-1 = none);
* ``overlay.png``: :func:`posthoc.viz.overlay` of the image, proposals and maps;
* ``record.json``: the hashes of the image file and of the run's settings, and the files.

and ``OUT/summary.json`` for the run (settings, versions, per-image files and timing).
Every file is written atomically. A rerun skips images whose record matches the image's
content, the settings' hash, and whose files all exist (resume); anything else is redone.
Errors (no image matched, an unreadable image, ``--out`` a file, an unknown teacher or
proposal source, ``refine`` with no class logits) print one line and exit with status 2.
"""
from __future__ import annotations

import argparse
import glob as globlib
import hashlib
import json
import logging
import os
import platform
import sys
import time
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np

from posthoc.errors import PosthocError

from . import _omp  # noqa: F401  # first of the package's modules: sets OMP_WAIT_POLICY before torch loads
from .config import BenchError, _onnx_out_channels, build_adapter, check_device, check_output_dir, parse_weights, slug
from .fingerprint import hash_files, weight_files

log = logging.getLogger(__name__)

__all__ = ["IMAGE_SUFFIXES", "STEPS", "build_parser", "find_images", "main", "run_fuse"]

#: the chain's steps, in the order they are applied (each on top of the previous selected one)
STEPS = ("csl2", "refine", "offsets")
#: file suffixes ``--images DIR`` picks up (case-insensitive)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
_RECORD = "record.json"
_FORMAT = 1  # bump when the per-image outputs change meaning


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="posthoc",
        description="Post-hoc structure constraints for one's own segmentation or anomaly model.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    f = sub.add_parser(
        "fuse",
        help="run a model on a folder of images and write its maps improved by CSL2 / refine / offsets",
        description="Run a model (an ONNX file or a registered teacher) on a folder of images, and write the "
                    "teacher's map and every variant's map (.npy + PNG), an overlay per image and summary.json.",
    )
    who = f.add_mutually_exclusive_group(required=True)
    who.add_argument("--model", metavar="FILE.onnx", help="your ONNX model: image (B,3,H,W) float -> (B,C,h,w)")
    who.add_argument("--teacher", metavar="NAME", help="a registered teacher (posthoc.adapters.list_teachers())")
    f.add_argument("--weights", help="weights of --teacher: PATH or role=PATH,role=PATH (default: bundled)")
    f.add_argument("--kind", choices=("anomaly", "semantic"), default=None,
                   help="anomaly: maps are [0,1] scores (a K-class --model is scored with MSP); semantic: maps "
                        "are fused class probabilities. Default: from the model's output channels (1 = anomaly)")
    f.add_argument("--activation", choices=("sigmoid",), default=None,
                   help="a 1-channel --model that outputs logits: apply a fixed sigmoid")
    f.add_argument("--mean", default=None, metavar="R,G,B",
                   help="--model's input normalization (x - mean) / std on [0,1] pixels; default ImageNet "
                        "0.485,0.456,0.406 (values > 1 mean 0..255 pixels)")
    f.add_argument("--std", default=None, metavar="R,G,B", help="see --mean; default ImageNet 0.229,0.224,0.225")
    f.add_argument("--images", required=True, metavar="DIR_OR_GLOB",
                   help=f"a folder (its {', '.join(IMAGE_SUFFIXES)} files) or a glob such as 'data/**/*.png'")
    f.add_argument("--proposals", default="superpixels",
                   help="comma-separated proposal sources (posthoc.adapters.list_proposals()); default superpixels")
    f.add_argument("--variants", default=None,
                   help=f"comma-separated subset of {','.join(STEPS)} (default: all that apply; the teacher's map "
                        "is always written)")
    f.add_argument("--out", required=True, metavar="DIR", help="output folder (created; a rerun resumes)")
    f.add_argument("--device", default=None, help="cpu, cuda, cuda:N (default: the adapters' default)")
    f.add_argument("--no-overlay", action="store_true", help="do not draw overlay.png (no matplotlib needed)")
    f.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


# ----------------------------------------------------------------------------- inputs


def find_images(spec: str) -> list[Path]:
    """The image files ``--images`` names: a folder's image files, or a glob's matches, sorted.

    Raises:
        BenchError: nothing matched (the message says what was looked for).
    """
    p = Path(spec).expanduser()
    if p.is_dir():
        files = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise BenchError(f"--images {spec}: the folder has no image files ({', '.join(IMAGE_SUFFIXES)})")
        return files
    if p.is_file():
        return [p]
    files = sorted(Path(m) for m in globlib.glob(str(p), recursive=True) if Path(m).is_file())
    if not files:
        raise BenchError(f"--images {spec}: no file matched (give a folder, a file or a glob such as 'dir/*.png')")
    return files


def _image_names(files: Sequence[Path]) -> list[str]:
    """One output folder name per image: its path below the images' common folder, without suffix."""
    parents = [str(f.resolve().parent) for f in files]
    root = Path(os.path.commonpath(parents)) if parents else Path(".")
    names = [slug(str(f.resolve().relative_to(root).with_suffix(""))) for f in files]
    seen: dict[str, Path] = {}
    for n, f in zip(names, files, strict=True):
        if n in seen:
            raise BenchError(f"--images: {seen[n]} and {f} would both write to the output folder {n!r}; "
                             "rename one or run them separately")
        seen[n] = f
    return names


def _csv(s: str | None) -> list[str]:
    return [x.strip() for x in (s or "").split(",") if x.strip()]


def _versions() -> dict:
    import posthoc

    out = {"posthoc": posthoc.__version__, "python": platform.python_version(), "numpy": np.__version__}
    for mod in ("torch", "onnxruntime", "cv2", "matplotlib"):
        m = sys.modules.get(mod)
        if m is not None:
            out[mod] = getattr(m, "__version__", "?")
    return out


def _sha256(path: Path) -> str:
    from posthoc.adapters.io import file_sha256

    return file_sha256(path)


# ----------------------------------------------------------------------------- teacher


def _resolve_teacher(args: argparse.Namespace) -> tuple[str, Any, dict, list[str]]:
    """(registry name, weights, factory keywords, notes) of the teacher the flags describe."""
    notes: list[str] = []
    if args.model is None:
        if args.activation is not None:
            raise BenchError("--activation applies to --model; a registered --teacher calibrates its own scores")
        if args.mean is not None or args.std is not None:
            raise BenchError("--mean/--std apply to --model; a registered --teacher has its official preprocessing")
        return args.teacher, parse_weights(args.weights), {}, notes
    if args.weights:
        raise BenchError("--weights goes with --teacher NAME; with --model the .onnx file is the weights")
    norm = {k: _triple(getattr(args, k), f"--{k}") for k in ("mean", "std") if getattr(args, k) is not None}
    path = Path(args.model).expanduser()
    if not path.is_file():
        raise BenchError(f"--model {args.model}: file {path} does not exist")
    if path.suffix.lower() != ".onnx":
        raise BenchError(f"--model {args.model}: expected an .onnx file; for a torch module use posthoc.Pipeline "
                         "with posthoc.adapters.teachers.TorchTeacher (docs/inference.md)")
    channels = _onnx_out_channels(path)
    kind = args.kind
    if kind is None:
        if channels is None:
            raise BenchError(f"--model {path.name}: its output channel count is dynamic or unreadable; "
                             "pass --kind anomaly or --kind semantic")
        kind = "anomaly" if channels == 1 else "semantic"
    if kind == "anomaly" and channels is not None and channels > 1:
        if args.activation is not None:
            raise BenchError(f"--activation sigmoid applies to a 1-channel anomaly model; {path.name} outputs "
                             f"{channels} classes and is scored with MSP (a probability already)")
        notes.append(f"{path.name} outputs {channels} classes: its anomaly map is MSP, 1 - max softmax "
                     "(Hendrycks & Gimpel, ICLR 2017)")
        return "msp", str(path), norm, notes
    if kind == "semantic" and channels == 1:
        raise BenchError(f"--kind semantic: {path.name} outputs 1 channel; a semantic model outputs K>1 class "
                         "logits. Use --kind anomaly for a 1-channel anomaly model")
    kw: dict = {"path": str(path), "kind": kind, **norm}
    if args.activation is not None:
        if kind != "anomaly":
            raise BenchError("--activation sigmoid applies to --kind anomaly (a 1-channel model that outputs logits)")
        kw["activation"] = args.activation
    return "onnx", None, kw, notes


def _triple(text: str, flag: str) -> list[float]:
    try:
        vals = [float(v) for v in text.split(",")]
    except ValueError:
        vals = []
    if len(vals) != 3 or not all(np.isfinite(vals)) or (flag == "--std" and min(vals) <= 0):
        raise BenchError(f"{flag} must be three {'positive ' if flag == '--std' else ''}numbers R,G,B "
                         f"such as 0.5,0.5,0.5; got {text!r}")
    return vals


def _teacher_fingerprint(name: str, weights: Any, kw: dict) -> dict:
    if name == "onnx":
        return {"model": _sha256(Path(kw["path"]))}
    return hash_files(weight_files(name, weights))


# ----------------------------------------------------------------------------- writing


def _palette(k: int) -> np.ndarray:
    rng = np.random.default_rng(0)  # the colours of posthoc.viz's class maps
    return rng.integers(40, 255, size=(max(k, 1), 3)).astype(np.uint8)


def _png(dest: Path, arr: np.ndarray, kind: str) -> None:
    """Heat map (anomaly, (H,W) in [0,1], inferno) or class map (semantic, (K,H,W) -> argmax colours)."""
    import cv2

    from posthoc.adapters.io import write_bytes_atomic

    if kind == "anomaly":
        u8 = np.clip(np.rint(arr * 255.0), 0, 255).astype(np.uint8)
        bgr = cv2.applyColorMap(u8, cv2.COLORMAP_INFERNO)
    else:
        rgb = _palette(arr.shape[0])[arr.argmax(0)]
        bgr = np.ascontiguousarray(rgb[..., ::-1])
    ok, buf = cv2.imencode(".png", bgr)
    if not ok:
        raise BenchError(f"could not encode {dest}")
    write_bytes_atomic(dest, buf.tobytes())


def _record_ok(folder: Path, image_sha: str, config_sha: str) -> dict | None:
    """The image's record if its outputs are complete for this image content and these settings."""
    rec_path = folder / _RECORD
    try:
        rec = json.loads(rec_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(rec, dict) or rec.get("image_sha256") != image_sha or rec.get("config_sha256") != config_sha:
        return None
    files = rec.get("files")
    if not isinstance(files, dict) or not files:
        return None
    if not all((folder / f).is_file() for f in files.values()):
        return None
    return rec


# ----------------------------------------------------------------------------- run


def run_fuse(args: argparse.Namespace) -> dict:
    """Run ``posthoc fuse`` with parsed flags; returns the summary (also written to ``OUT/summary.json``).

    Raises:
        PosthocError: bad settings or inputs (the message names the flag or the file).
    """
    from posthoc import adapters
    from posthoc.adapters.io import write_json_atomic

    from .infer import Timer

    t_start = time.perf_counter()
    # ---- everything that can be checked before any work, and before --out is created
    sources = _csv(args.proposals)
    if not sources:
        raise BenchError("--proposals is empty; name at least one source, e.g. superpixels")
    if len(set(sources)) != len(sources):
        raise BenchError(f"--proposals lists a source twice: {','.join(sources)}")
    known_p = adapters.list_proposals()
    bad = [s for s in sources if s not in known_p]
    if bad:
        raise BenchError(f"unknown proposal source {bad[0]!r}; known proposal sources: {', '.join(known_p)}")
    explicit = args.variants is not None
    steps = [v for v in _csv(args.variants) if v != "teacher"] if explicit else list(STEPS)
    bad = [v for v in steps if v not in STEPS]
    if bad or (explicit and not _csv(args.variants)):
        raise BenchError(f"--variants must be a non-empty subset of {','.join(STEPS)}; got {args.variants!r}")
    steps = [s for s in STEPS if s in steps]
    if args.teacher is not None and args.teacher not in adapters.list_teachers():
        raise BenchError(f"unknown teacher {args.teacher!r}; known teachers: {', '.join(adapters.list_teachers())}")
    t_name, t_weights, t_kw, notes = _resolve_teacher(args)
    files = find_images(args.images)
    names = _image_names(files)
    device = check_device(args.device)
    out_p = Path(args.out).expanduser()
    if out_p.exists() and not out_p.is_dir():
        raise BenchError(f"--out {out_p} exists and is not a folder; give a folder (new or existing) for --out")
    draw = not args.no_overlay
    if draw:
        from posthoc.viz import require_matplotlib

        require_matplotlib()
    kind_hint = t_kw.get("kind") if t_name == "onnx" else ("anomaly" if t_name == "msp" else args.kind)
    if kind_hint == "semantic" and "refine" in steps:
        if explicit:
            raise BenchError("--variants refine: Mask2Anomaly refinement refines anomaly maps (C=1); a semantic "
                             "model's maps are class scores. Drop refine, or use --kind anomaly")
        steps.remove("refine")
        notes.append("refine skipped: it refines anomaly maps, and this is a semantic model")

    # ---- settings hash: what the outputs depend on
    config = {
        "format": _FORMAT, "model": str(Path(args.model).resolve()) if args.model else None, "teacher": t_name,
        "weights": t_weights, "teacher_settings": t_kw, "kind": args.kind, "proposals": sources,
        "variants": list(steps), "variants_explicit": explicit, "device": device, "overlay": draw,
    }
    fingerprint = {"teacher_files": _teacher_fingerprint(t_name, t_weights, t_kw),
                   "posthoc": _versions()["posthoc"]}
    config_sha = hashlib.sha256(json.dumps([config, fingerprint], sort_keys=True, default=str).encode()).hexdigest()

    timer = Timer()
    with timer("build"):  # before --out is created: a teacher that cannot load leaves no folder behind
        teacher = build_adapter("teacher", t_name, device=device, weights=t_weights, **t_kw)
        prop_objs = {s: build_adapter("proposals", s, device=device) for s in sources}
    out = check_output_dir(args.out, "--out")
    summary: dict = {
        "tool": "posthoc fuse", "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "argv": list(getattr(args, "argv", []) or []), "config": config, "config_sha256": config_sha,
        "fingerprint": fingerprint, "versions": _versions(), "notes": notes, "complete": False,
        "images": [], "counts": {"images": len(files), "computed": 0, "resumed": 0},
    }
    try:
        _loop(args, files, names, out, teacher, t_name, prop_objs, steps, explicit, config_sha, draw, notes,
              summary, timer)
        summary["complete"] = True
    finally:
        summary["seconds"] = {k: round(v, 4) for k, v in timer.t.items()}
        summary["seconds"]["total"] = round(time.perf_counter() - t_start, 4)
        write_json_atomic(out / "summary.json", summary)
    return summary


def _loop(args: argparse.Namespace, files: list[Path], names: list[str], out: Path, teacher: Any, t_name: str,
          prop_objs: dict, steps: list[str], explicit: bool, config_sha: str, draw: bool, notes: list[str],
          summary: dict, timer: Any) -> None:
    """Compute (or resume) every image; fills ``summary`` as it goes. ``steps`` and ``notes`` are
    updated in place when a step turns out not to apply (known after the first image)."""
    import torch

    from posthoc.adapters.io import atomic_path, save_npy_atomic, write_json_atomic
    from posthoc.types import TeacherOutput

    from .datasets import read_image
    from .infer import progress
    from .variants import Variant, VariantMaps, suppress_choice, variant_chain

    chain: list[Variant] = []
    vmaps: VariantMaps | None = None
    kind = None
    bar = progress(None, len(files), "posthoc fuse", not args.quiet)
    with torch.inference_mode():
        for path, name in zip(files, names, strict=True):
            folder = out / name
            image_sha = _sha256(path)
            rec = _record_ok(folder, image_sha, config_sha)
            if rec is not None:
                summary["counts"]["resumed"] += 1
                summary.setdefault("kind", rec.get("kind"))
                for n in rec.get("notes") or []:
                    if n not in notes:
                        notes.append(n)
                summary["images"].append({"image": str(path), "folder": name, "files": rec["files"],
                                          "resumed": True, "seconds": rec.get("seconds", {})})
                if bar is not None:
                    bar.update(1)
                continue
            t_img: dict[str, float] = {}
            t0 = time.perf_counter()
            image = read_image(path)
            t_img["read"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            t_out = teacher(image[None])
            t_img["teacher"] = time.perf_counter() - t0
            if not isinstance(t_out, TeacherOutput):
                raise BenchError(f"teacher {t_name!r} returned {type(t_out).__name__}; expected posthoc.TeacherOutput")
            if kind is None:
                kind = t_out.kind
                if args.kind is not None and args.kind != kind:
                    raise BenchError(f"--kind {args.kind}: teacher {t_name!r} gives {kind} maps; "
                                     f"drop --kind or pass --kind {kind}")
            elif t_out.kind != kind:
                raise BenchError(f"teacher {t_name!r} changed kind from {kind} to {t_out.kind} at {path}")
            t0 = time.perf_counter()
            props = {s: obj(image[None], teacher_output=t_out) for s, obj in prop_objs.items()}
            t_img["proposals"] = time.perf_counter() - t0
            if vmaps is None:
                if "refine" in steps:
                    reason = None
                    if kind != "anomaly":
                        reason = "it refines anomaly maps, and this teacher gives semantic maps"
                    elif t_out.logits is None and any(p.class_logits is None for p in props.values()):
                        lacking = [s for s, p in props.items() if p.class_logits is None]
                        reason = (f"it needs class logits: the teacher gives no semantic logits and proposal "
                                  f"source(s) {', '.join(lacking)} give none (a mask-transformer source or a "
                                  f"semantic --model with --kind anomaly has them)")
                    if reason is not None:
                        if explicit:
                            raise BenchError(f"--variants refine: {reason}; drop refine from --variants")
                        steps.remove("refine")
                        notes.append(f"refine skipped: {reason}")
                if not steps:
                    raise BenchError("no variant left to compute; --variants named only refine, which does not apply")
                chain = variant_chain(["teacher", *steps], list(prop_objs))
                suppress = None
                if "refine" in steps:
                    suppress, how = suppress_choice(teacher)
                    notes.append(f"refine suppresses classes {how}")
                vmaps = VariantMaps(chain, suppress_ids=suppress)
                summary["variants"] = [{"key": v.key, "display": v.display, "file": slug(v.key)} for v in chain]
                summary["kind"] = kind
                summary["class_names"] = list(t_out.class_names)
            scores = t_out.anomaly if kind == "anomaly" else t_out.scores.float()
            t0 = time.perf_counter()
            maps = vmaps(scores, t_out, props)
            t_img["pipeline"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            written: dict[str, str] = {}
            shown: dict[str, np.ndarray] = {}
            for v in chain:
                m = maps[v.key]
                if kind == "semantic" and v.source is None:
                    m = torch.softmax(m, dim=1)  # fuse's own normalization of logits (CSL Eq. 3 input)
                arr = m[0].detach().cpu().numpy().astype(np.float32, copy=False)
                arr = arr[0] if kind == "anomaly" else arr
                stem = slug(v.key)
                save_npy_atomic(folder / f"{stem}.npy", arr)
                _png(folder / f"{stem}.png", arr, kind)
                written[f"{v.key}.npy"] = f"{stem}.npy"
                written[f"{v.key}.png"] = f"{stem}.png"
                shown["teacher" if v.source is None else v.display] = (
                    arr if kind == "anomaly" else arr.argmax(0).astype(np.int32))
            labels = {}
            for s, p in props.items():
                lab = p.labels
                lab = lab.detach().cpu().numpy() if hasattr(lab, "detach") else np.asarray(lab)
                lab = lab[0].astype(np.int32)
                if lab.shape != image.shape[:2]:
                    import cv2

                    lab = cv2.resize(lab, image.shape[1::-1], interpolation=cv2.INTER_NEAREST)
                labels[s] = lab
                save_npy_atomic(folder / f"proposals-{slug(s)}.npy", lab)
                written[f"proposals@{s}.npy"] = f"proposals-{slug(s)}.npy"
            if draw:
                from posthoc.viz import overlay

                fig = overlay(image, shown, proposals=labels[next(iter(labels))],
                              title=f"{path.name}: proposals from {next(iter(labels))}")
                with atomic_path(folder / "overlay.png", suffix=".png") as tmp:
                    fig.savefig(tmp, format="png", dpi=100, bbox_inches="tight")
                written["overlay.png"] = "overlay.png"
            t_img["write"] = time.perf_counter() - t0
            for k, dt in t_img.items():
                timer.add(k, dt)
            seconds = {k: round(v, 4) for k, v in t_img.items()}
            write_json_atomic(folder / _RECORD, {
                "image": str(path), "image_sha256": image_sha, "config_sha256": config_sha,
                "shape": list(image.shape[:2]), "kind": kind, "files": written, "seconds": seconds,
                "notes": notes[:],
            })
            summary["counts"]["computed"] += 1
            summary["images"].append({"image": str(path), "folder": name, "files": written, "resumed": False,
                                      "seconds": seconds})
            if bar is not None:
                bar.update(1)
    if bar is not None:
        bar.close()
    if "variants" not in summary:  # every image resumed: describe the variants from the first record
        chain = chain or variant_chain(["teacher", *steps], list(prop_objs))
        summary["variants"] = [{"key": v.key, "display": v.display, "file": slug(v.key)} for v in chain
                               if f"{v.key}.npy" in summary["images"][0]["files"]] if summary["images"] else []


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``posthoc`` / ``python -m posthoc``; returns the exit code (2 on any error)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help, or a usage error (argparse printed it)
        return int(e.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="posthoc: %(levelname)s: %(message)s")
    args.argv = argv
    try:
        summary = run_fuse(args)
    except KeyboardInterrupt:
        print("posthoc fuse: interrupted; rerun the same command to resume", file=sys.stderr)
        return 130
    except (PosthocError, OSError, KeyError, ValueError) as e:
        log.debug("posthoc fuse failed", exc_info=True)
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"posthoc fuse: error: {msg}", file=sys.stderr)
        return 2
    c = summary["counts"]
    print(f"posthoc fuse: {c['images']} image(s), {c['computed']} computed, {c['resumed']} resumed; "
          f"outputs in {args.out} (summary.json)")
    for n in summary["notes"]:
        print(f"note: {n}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
