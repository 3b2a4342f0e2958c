"""Convert a JAX function to ONNX and write it only if onnxruntime reproduces JAX on given observations.

`write_verified` serialises to a temporary file beside the destination, runs that exact file in
onnxruntime on every observation set, compares each output with the JAX reference, and only then
renames it into place (atomic on one filesystem). A model that fails is deleted and `ParityError`
names the set, output, error and worst observation; nothing is left at the destination.

The tolerance is absolute for inputs of ordinary size and grows with the input's magnitude beyond that
(`input_scale`, capped at `MAX_INPUT_SCALE`): XLA and onnxruntime sum a float32 layer in different orders,
and that rounding grows with the size of the normalised input. Failure states sit far outside the base
policy's nominal statistics (a block lying on its side is hundreds of nominal standard deviations away in
its rotation features), and there a correct graph differed by 1.6e-5, over a flat 1e-5, on rounding alone.
The cap keeps the allowance at 10x the flat tolerance at most, and rows near the statistics (scale 1) are
held to the flat tolerance, so a wrong graph still shows (tests/test_export.py tampers with a weight).

Rounding also grows with the network's weights, at any input size: a pick_place policy warm-started with 8000 Adam
steps per fit (weights up to 21 in its first layer) put JAX float32 itself up to 8.3e-5 from a float64 evaluation
of the same formula, and onnxruntime up to 1.1e-4, on inputs near the statistics (session 24). So a caller may pass
`exact`, a float64 evaluation of the graph's formula: each output's allowance then adds twice the reference's own
measured float32 error on that set. That float64 formula is a third implementation, so its agreement with the
reference is bounded (`MAX_FLOAT32_ROUNDING`): beyond it the check refuses rather than loosening further.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable

import numpy as np
import onnx
import onnxruntime as ort

DEFAULT_OPSET = 17  # onnxruntime >= 1.13; everything these MLPs need (Gemm, Sigmoid, Tanh, Clip, Slice)
DEFAULT_TOLERANCE = 1e-5
MAX_INPUT_SCALE = 10.0  # the tolerance grows with the input's magnitude up to this factor (see module docstring)
MAX_FLOAT32_ROUNDING = 1e-3  # the most |float32 reference - float64 formula| accepted as rounding (module docstring)


class ParityError(RuntimeError):
    """ONNX output differs from JAX beyond the tolerance: the model was not written."""


def to_onnx_model(fn: Callable, input_size: int, input_name: str, output_names: list[str], model_name: str,
                  opset: int = DEFAULT_OPSET) -> onnx.ModelProto:
    """ONNX model of `fn(x[batch, input_size]) -> output(s)` with a dynamic batch dimension."""
    from jax2onnx import to_onnx

    model = to_onnx(fn, inputs=[("batch", input_size)], input_names=[input_name], output_names=output_names,
                    model_name=model_name, opset=opset)
    onnx.checker.check_model(model)
    return model


def run_onnx(path_or_bytes: Path | bytes, x: np.ndarray) -> dict[str, np.ndarray]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    sess = ort.InferenceSession(str(path_or_bytes) if isinstance(path_or_bytes, Path) else path_or_bytes, opts,
                                providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: np.asarray(x, np.float32)})
    return {o.name: v for o, v in zip(sess.get_outputs(), outs)}


def row_errors(onnx_out: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Output name -> max |ONNX - JAX| of each row; NaN anywhere counts as infinite error."""
    res = {}
    for name, ref in reference.items():
        if name not in onnx_out:
            raise ParityError(f"ONNX model has no output {name!r} (outputs: {sorted(onnx_out)})")
        diff = np.abs(np.asarray(onnx_out[name], np.float64) - np.asarray(ref, np.float64))
        diff = np.where(np.isnan(diff), np.inf, diff)
        res[name] = diff.reshape(len(diff), int(np.prod(diff.shape[1:]))).max(axis=1, initial=0.0)
    return res


def write_verified(model: onnx.ModelProto, dest: Path, reference: Callable[[np.ndarray], dict[str, np.ndarray]],
                   checks: dict[str, np.ndarray], tolerance: float = DEFAULT_TOLERANCE,
                   input_scale: Callable[[np.ndarray], np.ndarray] | None = None,
                   exact: Callable[[np.ndarray], dict[str, np.ndarray]] | None = None) -> dict:
    """Write `model` to `dest` only if it matches `reference` on every observation set in `checks`.

    Row i of a set may differ by at most `tolerance * input_scale(x)[i]`, the scale clipped to
    [1, MAX_INPUT_SCALE] (no `input_scale`: a flat `tolerance`), plus, with `exact` (float64, same formula),
    twice the largest |reference - exact| of that set and output. Returns {"max_abs_error": {"<set>/<output>":
    err}, "max_input_scale": {set: largest scale}, "counts": {set: n}} (with `exact` also "float32_rounding":
    {"<set>/<output>": that largest difference}); raises ParityError otherwise.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
    tmp.write_bytes(model.SerializeToString())
    errors: dict[str, float] = {}
    scales: dict[str, float] = {}
    rounding: dict[str, float] = {}
    try:
        for set_name, x in checks.items():
            got = run_onnx(tmp, x)
            want = {k: np.asarray(v) for k, v in reference(x).items()}
            scale = _row_scales(input_scale, x)
            scales[set_name] = float(scale.max(initial=1.0))
            extra = {} if exact is None else float32_rounding(dest.name, set_name, want, exact(x))
            rounding.update({f"{set_name}/{k}": v for k, v in extra.items()})
            for out_name, err in row_errors(got, want).items():
                errors[f"{set_name}/{out_name}"] = float(err.max(initial=0.0))
                allowed = tolerance * scale + 2.0 * extra.get(out_name, 0.0)
                bad = ~(err <= allowed)  # NaN / inf errors are bad too
                if bad.any():
                    worst = int(np.argmax(np.where(bad, err - allowed, -np.inf)))
                    raise ParityError(
                        f"refusing to write {dest.name}: output {out_name!r} differs from JAX by {err[worst]:.3g} "
                        f"(allowed {allowed[worst]:.3g}: tolerance {tolerance:g} x input scale {scale[worst]:.3g}"
                        + (f" + 2 x float32 rounding {extra[out_name]:.3g}" if out_name in extra else "") + ") "
                        f"on {set_name} observation #{worst} of {len(x)}; "
                        f"ONNX {np.asarray(got[out_name])[worst].round(6).tolist()} "
                        f"vs JAX {np.asarray(want[out_name])[worst].round(6).tolist()}"
                    )
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            tmp.unlink()
    out = {"max_abs_error": errors, "max_input_scale": scales, "counts": {k: int(len(v)) for k, v in checks.items()}}
    return out if exact is None else {**out, "float32_rounding": rounding}


def float32_rounding(file_name: str, set_name: str, reference: dict[str, np.ndarray],
                     exact: dict[str, np.ndarray]) -> dict[str, float]:
    """Output name -> the largest |float32 reference - float64 formula| over the set: the reference's own rounding.
    Refuses (ParityError) past MAX_FLOAT32_ROUNDING: that is a formula that disagrees, not rounding."""
    res = {}
    for name, ref in reference.items():
        if name not in exact:
            raise ParityError(f"refusing to write {file_name}: the float64 evaluation has no output {name!r}")
        diff = np.abs(np.asarray(ref, np.float64) - np.asarray(exact[name], np.float64))
        worst = float(np.nan_to_num(diff, nan=np.inf).max(initial=0.0))
        if not worst <= MAX_FLOAT32_ROUNDING:
            raise ParityError(f"refusing to write {file_name}: on {set_name}, output {name!r} of the float32 JAX reference "
                              f"is {worst:.3g} from its float64 evaluation, over the {MAX_FLOAT32_ROUNDING:g} accepted as "
                              "rounding (a float64 formula that differs from the graph's, or a network too ill-conditioned "
                              "for float32)")
        res[name] = worst
    return res


def _row_scales(input_scale: Callable[[np.ndarray], np.ndarray] | None, x: np.ndarray) -> np.ndarray:
    """One finite scale in [1, MAX_INPUT_SCALE] per row of `x`."""
    if input_scale is None:
        return np.ones(len(x))
    scale = np.asarray(input_scale(x), np.float64)
    if scale.shape != (len(x),):
        raise ValueError(f"input_scale must return one value per row, shape {(len(x),)}; got {scale.shape}")
    return np.clip(np.nan_to_num(scale, nan=MAX_INPUT_SCALE), 1.0, MAX_INPUT_SCALE)
