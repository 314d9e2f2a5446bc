"""ONNX Runtime session helpers shared by the ONNX teachers and proposal sources.

Two stable entry points:

* :func:`make_session` ``(path, device=None, providers=None) -> onnxruntime.InferenceSession``
  opens a model with the CUDA provider when a GPU is present (and onnxruntime-gpu can
  use it), else the CPU provider, and turns every failure into a clear posthoc error
  that names the path and what was expected.
* :func:`run_session` ``(session, feeds, output_names=None) -> dict[str, torch.Tensor]``
  checks the feeds against the model's declared inputs (names, rank, fixed sizes,
  dtype), runs the model and returns torch tensors. On a CUDA session, inputs and
  outputs are bound to device memory with ONNX Runtime's IO binding, so torch CUDA
  tensors go in and come out without a round trip through host memory.

:func:`input_specs` / :func:`output_specs` describe a session's tensors with ``None``
for dynamic axes. onnxruntime is imported inside the functions, so importing this
module never needs it; a missing onnxruntime raises :class:`MissingExtraError`
naming ``pip install 'posthoc[onnx]'``.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from posthoc.errors import DTypeError, MissingExtraError, PosthocError, ShapeError
from posthoc.validation import check_tensor_type, shape_str

log = logging.getLogger(__name__)

#: environment variable that turns onnxruntime's thread spinning back on ("1") for sessions
#: opened with ``make_session(..., allow_spinning=None)``
SPINNING_ENV = "POSTHOC_ORT_ALLOW_SPINNING"

__all__ = [
    "ModelFileNotFoundError",
    "OnnxModelError",
    "SPINNING_ENV",
    "TensorSpec",
    "input_specs",
    "make_session",
    "output_specs",
    "require_onnxruntime",
    "resolve_device",
    "run_session",
    "session_device",
]

# ONNX element types as onnxruntime reports them -> numpy / torch dtypes
_ORT_TO_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}
_NUMPY_TO_TORCH = {
    np.float32: torch.float32,
    np.float16: torch.float16,
    np.float64: torch.float64,
    np.int64: torch.int64,
    np.int32: torch.int32,
    np.int8: torch.int8,
    np.uint8: torch.uint8,
    np.bool_: torch.bool,
}


class OnnxModelError(PosthocError, ValueError):
    """An ONNX file could not be loaded or run (corrupt file, unsupported op, bad feeds)."""


class ModelFileNotFoundError(PosthocError, FileNotFoundError):
    """A model file that was asked for does not exist."""


@dataclass(frozen=True)
class TensorSpec:
    """A model input or output as declared in the ONNX graph.

    Attributes:
        name: tensor name.
        shape: one entry per axis, an int for a fixed size or None for a dynamic one
            (symbolic names such as "batch" are reported as None).
        dtype: numpy dtype (``np.float32`` ...), or None for types posthoc does not map.
        type_str: onnxruntime's type string, e.g. "tensor(float)".
    """

    name: str
    shape: tuple
    dtype: Any
    type_str: str

    @property
    def rank(self) -> int:
        return len(self.shape)

    def describe(self) -> str:
        dims = ",".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}: {self.type_str} ({dims})"


def require_onnxruntime():
    """Import and return onnxruntime, or raise MissingExtraError naming the extra."""
    try:
        import onnxruntime as ort
    except ImportError as e:
        raise MissingExtraError(
            "ONNX models need onnxruntime, which is not installed; run `pip install 'posthoc[onnx]'` "
            f"(onnxruntime-gpu, or plain onnxruntime on CPU-only machines). Import error: {e}"
        ) from e
    return ort


def resolve_device(device: Any | None = None, ort: Any = None) -> torch.device:
    """Pick the device a session runs on.

    None -> ``cuda`` when torch sees a GPU *and* onnxruntime offers the CUDA provider,
    else ``cpu``. A string or torch.device is taken as given ("cpu", "cuda", "cuda:1").
    """
    if device is not None:
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            raise DTypeError(f"device must be 'cpu' or 'cuda[:i]' for ONNX Runtime; got {device!r}")
        return dev
    if ort is None:
        ort = require_onnxruntime()
    if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _default_providers(dev: torch.device, ort: Any) -> list:
    if dev.type == "cuda":
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            raise OnnxModelError(
                "device='cuda' was asked for but this onnxruntime has no CUDAExecutionProvider "
                f"(available: {ort.get_available_providers()}); install onnxruntime-gpu: "
                "`pip install 'posthoc[onnx]'`"
            )
        return [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


def make_session(
    path: Any,
    device: Any | None = None,
    providers: Sequence[Any] | None = None,
    *,
    threads: int | None = None,
    expect: str = "an ONNX model",
    allow_spinning: bool | None = None,
):
    """Open an ONNX model with onnxruntime.

    By default the session's intra-op threads do not spin (busy-wait) after a run: they
    block. onnxruntime's own default lets them spin for a while after every run, which on
    a machine with few or shared cores steals the time of whatever runs next (torch, the
    numba kernels of the chain): on the 2-core development machine the bundled teacher took
    about 2.5x as long inside a benchmark run with spinning on. Blocking threads change the
    timing only, never the outputs.

    Args:
        path: path to a ``.onnx`` file.
        device: None (CUDA if a GPU is usable, else CPU), "cpu", "cuda" or "cuda:i".
        providers: explicit onnxruntime providers list; overrides ``device``'s choice.
        threads: intra-op threads for the CPU provider (None = onnxruntime's default).
        expect: what the caller needs the file to be, for error messages
            (e.g. "a semantic segmentation model with one (B,3,H,W) float input").
        allow_spinning: let intra-op threads spin after each run (onnxruntime's
            ``session.intra_op.allow_spinning``; its own default). None = the environment
            variable ``POSTHOC_ORT_ALLOW_SPINNING`` ("1" = spin), else False: on a dedicated
            machine where the model runs back to back, spinning can save a little latency.

    Returns:
        ``onnxruntime.InferenceSession``; :func:`session_device` tells where it runs.

    Raises:
        MissingExtraError: onnxruntime is not installed.
        ModelFileNotFoundError: ``path`` does not exist or is a folder.
        OnnxModelError: onnxruntime cannot load it (corrupt file, not ONNX, unsupported
            opset); the message carries the path, the expectation and onnxruntime's error.
    """
    ort = require_onnxruntime()
    if not isinstance(path, (str, os.PathLike)):
        raise DTypeError(f"ONNX model path must be a str or os.PathLike; got {type(path).__name__}")
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelFileNotFoundError(f"ONNX model file {str(p)!r} does not exist (expected {expect})")
    if not p.is_file():
        raise ModelFileNotFoundError(f"ONNX model path {str(p)!r} is not a file (expected {expect})")
    dev = resolve_device(device, ort)
    provs = list(providers) if providers is not None else _default_providers(dev, ort)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # errors only; posthoc logs what matters itself
    if threads is not None:
        opts.intra_op_num_threads = int(threads)
    if allow_spinning is None:
        allow_spinning = os.environ.get(SPINNING_ENV, "0").strip() == "1"
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if allow_spinning else "0")
    try:
        sess = ort.InferenceSession(str(p), sess_options=opts, providers=provs)
    except Exception as e:  # onnxruntime raises its own pybind exception types
        raise OnnxModelError(
            f"could not load {str(p)!r} as {expect}: onnxruntime said {type(e).__name__}: {e}. "
            "Is the file complete and a valid ONNX model (torch.onnx.export output)?"
        ) from e
    log.debug("opened %s with providers %s", p, sess.get_providers())
    return sess


def session_device(session: Any) -> torch.device:
    """The torch device matching the session's first provider (cuda:i or cpu)."""
    provs = session.get_providers()
    if provs and provs[0] == "CUDAExecutionProvider":
        opts = session.get_provider_options().get("CUDAExecutionProvider", {})
        return torch.device("cuda", int(opts.get("device_id", 0)))
    return torch.device("cpu")


def _spec(arg) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) and d >= 0 else None for d in (arg.shape or []))
    return TensorSpec(arg.name, shape, _ORT_TO_NUMPY.get(arg.type), arg.type)


def input_specs(session: Any) -> list[TensorSpec]:
    """The model's declared inputs, in graph order."""
    return [_spec(a) for a in session.get_inputs()]


def output_specs(session: Any) -> list[TensorSpec]:
    """The model's declared outputs, in graph order."""
    return [_spec(a) for a in session.get_outputs()]


def _check_feed(x: torch.Tensor, spec: TensorSpec) -> torch.Tensor:
    """Check one feed against its spec; cast between float types (never int <-> float)."""
    if x.ndim != spec.rank:
        raise ShapeError(
            f"ONNX input {spec.name!r} must have {spec.rank} axes {spec.describe()}; got shape {shape_str(x.shape)}"
        )
    for ax, (want, got) in enumerate(zip(spec.shape, x.shape, strict=False)):
        if want is not None and want != got:
            raise ShapeError(
                f"ONNX input {spec.name!r} has a fixed size {want} on axis {ax} {spec.describe()}; "
                f"got shape {shape_str(x.shape)}"
            )
    if spec.dtype is None:
        return x
    want_t = _NUMPY_TO_TORCH[spec.dtype]
    if x.dtype == want_t:
        return x
    if want_t.is_floating_point and x.is_floating_point():
        return x.to(want_t)
    if not want_t.is_floating_point and want_t != torch.bool and not x.is_floating_point() and x.dtype != torch.bool:
        return x.to(want_t)
    raise DTypeError(f"ONNX input {spec.name!r} must be {spec.type_str}; got dtype {x.dtype}")


def run_session(
    session: Any,
    feeds: Mapping[str, Any],
    output_names: Sequence[str] | None = None,
    *,
    io_binding: bool | None = None,
) -> dict[str, torch.Tensor]:
    """Run a session on named inputs and return named torch outputs.

    Args:
        session: an ``onnxruntime.InferenceSession`` (from :func:`make_session`).
        feeds: ``{input name: numpy array or torch tensor}``; every declared input must
            be given, with the declared rank and fixed sizes. Floats are cast to the
            declared float type; integer/float mismatches are an error.
        output_names: which outputs to compute (default: all, in graph order).
        io_binding: bind torch buffers directly (default: on for CUDA sessions, where it
            avoids host copies; off on CPU, where ``session.run`` on numpy is as fast).

    Returns:
        ``{output name: torch.Tensor}`` on :func:`session_device`'s device (a CUDA
        session returns CUDA tensors; with IO binding no host copy is made for inputs).

    Raises:
        ShapeError / DTypeError: a feed does not match the model's declared input.
        OnnxModelError: a name is missing or unknown, or onnxruntime fails while running.
    """
    specs = {s.name: s for s in input_specs(session)}
    outs = [s.name for s in output_specs(session)]
    missing = [n for n in specs if n not in feeds]
    extra = [n for n in feeds if n not in specs]
    if missing or extra:
        raise OnnxModelError(
            f"ONNX feeds must name exactly the model inputs [{'; '.join(s.describe() for s in specs.values())}]; "
            f"missing {missing}, unexpected {extra}"
        )
    names = list(output_names) if output_names is not None else outs
    unknown = [n for n in names if n not in outs]
    if unknown:
        raise OnnxModelError(f"unknown ONNX output(s) {unknown}; the model has outputs {outs}")
    dev = session_device(session)
    tensors = {}
    for n, v in feeds.items():
        check_tensor_type(v, f"ONNX input {n!r}")
        t = torch.from_numpy(np.ascontiguousarray(v)) if isinstance(v, np.ndarray) else v
        tensors[n] = _check_feed(t.detach(), specs[n])
    use_binding = dev.type == "cuda" if io_binding is None else bool(io_binding)
    try:
        if use_binding:
            return _run_bound(session, tensors, names, dev)
        np_feeds = {n: t.cpu().contiguous().numpy() for n, t in tensors.items()}
        result = session.run(names, np_feeds)
    except PosthocError:
        raise
    except Exception as e:
        shapes = {n: shape_str(t.shape) for n, t in tensors.items()}
        raise OnnxModelError(f"onnxruntime failed to run the model on inputs {shapes}: {type(e).__name__}: {e}") from e
    return {n: torch.from_numpy(np.asarray(r)) for n, r in zip(names, result, strict=False)}


def _ortvalue_to_torch(value: Any, dev: torch.device) -> torch.Tensor:
    """Turn an onnxruntime OrtValue living on ``dev`` into a torch tensor, zero-copy through DLPack.

    onnxruntime >= 1.17 OrtValues implement ``__dlpack__``; older builds fall back to a host copy.
    """
    if hasattr(value, "__dlpack__"):
        try:
            return torch.from_dlpack(value)
        except (RuntimeError, TypeError, BufferError) as e:
            log.debug("DLPack hand-over failed (%s); copying through host memory", e)
    return torch.from_numpy(np.asarray(value.numpy())).to(dev)


_TORCH_TO_NUMPY = {v: k for k, v in _NUMPY_TO_TORCH.items()}


def _run_bound(session: Any, tensors: dict, names: list, dev: torch.device) -> dict:
    """IO-bound run: bind torch buffers on ``dev`` as inputs and let onnxruntime allocate outputs there.

    On a CUDA session this avoids every host round trip (inputs are read from, and outputs
    left in, device memory); on CPU it runs the same code path, which the tests use.
    """
    binding = session.io_binding()
    dtype = dev.type
    index = dev.index or 0
    keep = []  # keep the contiguous buffers alive until the run is done
    for n, t in tensors.items():
        t = t.to(dev).contiguous()
        keep.append(t)
        binding.bind_input(
            name=n,
            device_type=dtype,
            device_id=index,
            element_type=_TORCH_TO_NUMPY[t.dtype],
            shape=tuple(t.shape),
            buffer_ptr=t.data_ptr(),
        )
    for n in names:
        binding.bind_output(n, dtype, index)
    if dtype == "cuda":
        torch.cuda.synchronize(dev)  # torch's pending writes to the inputs must land before onnxruntime reads
    binding.synchronize_inputs()
    session.run_with_iobinding(binding)
    binding.synchronize_outputs()
    values = binding.get_outputs()
    return {n: _ortvalue_to_torch(v, dev) for n, v in zip(names, values, strict=False)}
