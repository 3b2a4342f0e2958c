"""Export a training run's policies to ONNX, verified against JAX, with a manifest for the robot runtime.

    python -m experiments.export --run=runs/drawer-20261125-101500
    python -m experiments.export --run=RUN --policy=missed_handle --step=80 --out=/tmp/export

Writes into --out (default RUN/export): base_policy.onnx (obs[batch, 24] -> action[batch, 7]),
recovery_<policy>.onnx (residual_obs[batch, 43] -> residual = alpha*tanh(actor(normalized obs)),
action = clip(base action + residual)), and manifest.json (task, failure modes, descriptors, observation
layouts with units, action bounds, residual scale, control rate, opset, versions, sha256 of each file,
parity results, and each policy's runtime stall window where --recovery-stall-steps gives one). Each model
is checked in onnxruntime against JAX on >= 1000 random and >= 1000 failure-bank observations and is NOT
written if any output differs by more than --tolerance times the row's input scale (its largest |normalised
input|, clipped to [1, 10]: float32 rounding grows with it).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.export", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run directory (has policies/, checkpoints/, base_policy/, bank/)")
    p.add_argument("--policy", action="append", default=None,
                   help="export only this recovery policy (repeatable; default: all in RUN/policies)")
    p.add_argument("--step", type=int, default=None, help="checkpoint step to export (default: each policy's latest)")
    p.add_argument("--out", default=None, help="output directory (default RUN/export)")
    p.add_argument("--random-obs", type=int, default=1000, help="random observations in the parity check (>= 1000)")
    p.add_argument("--bank-obs", type=int, default=1000, help="failure-bank observations in the parity check (>= 1000)")
    p.add_argument("--tolerance", type=float, default=1e-5,
                   help="max |ONNX - JAX| allowed on any output, times the row's input scale in [1, 10]")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (17 runs on onnxruntime >= 1.13)")
    p.add_argument("--seed", type=int, default=0, help="seed of the random parity observations")
    p.add_argument("--recovery-stall-steps", action="append", default=None, metavar="[POLICY=]N",
                   help="write into the manifest after how many steps without task progress the runtime re-diagnoses a "
                        "policy's recovery: N for every policy, POLICY=N for one (repeatable; default: none, the "
                        "runtime's own 50). Choose it on train states: experiments.evaluate --states=train "
                        "--recovery-stall-steps=N (pick_place: 100, docs/experiments.md sessions 24-25)")
    return p


def parse_stall_steps(values: list[str] | None) -> dict[str, int]:
    """`[POLICY=]N` strings -> {policy or "*": N}; a malformed value is refused with the accepted form."""
    out: dict[str, int] = {}
    for v in values or []:
        name, _, n = v.rpartition("=")
        try:
            steps = int(n)
        except ValueError:
            steps = 0
        if steps < 1 or (not name and "=" in v):
            raise SystemExit(f"--recovery-stall-steps {v!r}: expected N or POLICY=N with N a whole number >= 1")
        out[name or "*"] = steps
    return out


def main(argv: list[str] | None = None):
    args = build_parser().parse_args(argv)
    if args.random_obs < 1000 or args.bank_obs < 1000:
        raise SystemExit("--random-obs and --bank-obs must be >= 1000 (the parity contract)")
    stall_steps = parse_stall_steps(args.recovery_stall_steps)
    from rich.console import Console

    from recovla_jax.utils.jax_setup import configure_jax

    configure_jax()
    from recovla_jax.export.exporter import export_run
    from recovla_jax.export.onnx_io import ParityError
    from recovla_jax.export.run_reader import RunDirError

    console = Console()
    t0 = time.time()
    try:
        with console.status("exporting (the first ONNX conversion loads jax2onnx's plugins, ~10 s) ..."):
            manifest = export_run(Path(args.run), Path(args.out) if args.out else None, args.policy, args.step,
                                  args.random_obs, args.bank_obs, args.tolerance, args.opset, args.seed,
                                  log=console.print, recovery_stall_steps=stall_steps)
    except (ParityError, RunDirError) as e:
        console.print(f"[bold red]export failed:[/] {e}")
        raise SystemExit(1) from e
    console.print(f"[bold green]done[/] in {time.time() - t0:.1f} s: base + {len(manifest.recovery_policies)} recovery "
                  f"policies ({', '.join(p.name for p in manifest.recovery_policies)}), opset {manifest.opset}")
    return manifest


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
