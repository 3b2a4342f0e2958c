"""Zero-shot sim-to-sim: run a run's exported ONNX policies through the robot runtime on native MuJoCo.

    python -m experiments.evaluate --run=runs/drawer-20261125-101500 --backend=mujoco
    python -m experiments.evaluate --run=RUN --episodes-per-mode=20 --nominal-episodes=50 --seed=1

Starts every held-out failure-bank state (split == heldout) on the native MuJoCo robot (C MuJoCo, not
MJX) under per-episode randomized dynamics, observation noise and action latency drawn from a held-out
seed, and reports success per failure mode (Wilson 95% CI, n) for the base alone, the recovery policy
as the MJX evaluation applied it (the whole episode; for a `train --hand-back` run, exactly the steps the
simulator labels a failure), and the full runtime (monitor, oracle or rules
selector, switching, safety), next to the MJX success of the same policies from RUN/results.json, plus
nominal-task success with the runtime on vs the base alone. Writes sim2sim.json, sim2sim.md (with the
episodes the runtime loses against the policy alone) and episodes.jsonl (one line per episode and arm: success,
steps, every runtime switch with its step and reason) into
--out (default RUN/sim2sim). Uses RUN/export (run `python -m experiments.export` first; if it is
missing it is created). `--states=train` starts the bank's train states instead (default --out RUN/sim2sim-train):
for choosing runtime settings such as --recovery-stall-steps without looking at held-out states (experiments.tune_runtime
does this for the stall window and writes the choice into the manifest); the report never reads it. Imports no JAX
unless it has to export.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

from experiments.arg_types import int_range, non_negative_float, non_negative_int, positive_float, positive_int
from recovla_jax.runtime.monitor import MonitorConfig  # pydantic only: the CLI's runtime defaults are the runtime's own

MONITOR_DEFAULTS = MonitorConfig()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m experiments.evaluate", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--run", required=True, help="training run directory")
    p.add_argument("--backend", choices=["mujoco"], default="mujoco", help="robot backend (native MuJoCo proxy)")
    p.add_argument("--export-dir", default=None, help="exported models (default RUN/export)")
    p.add_argument("--out", default=None, help="where sim2sim.json/.md and episodes.jsonl go (default RUN/sim2sim)")
    p.add_argument("--episodes-per-mode", type=positive_int, default=None, help="held-out states per failure mode (default: all)")
    p.add_argument("--states", choices=["heldout", "train"], default="heldout",
                   help="which failure-bank split to start: heldout (the results) or train (to choose runtime settings; "
                        "default --out RUN/sim2sim-train)")
    p.add_argument("--nominal-episodes", type=non_negative_int, default=100, help="nominal-start episodes per arm (0: skip)")
    p.add_argument("--max-steps", type=positive_int, default=None,
                   help="control steps per episode (default: training's episode length)")
    p.add_argument("--seed", type=int, default=0, help="seed of dynamics draws, noise and nominal starts")
    p.add_argument("--obs-noise", type=non_negative_float, default=None, help="observation noise std (default 0.001)")
    p.add_argument("--latency", type=int_range, default=None, help="action latency range in control steps, 'lo,hi' (default 0,1)")
    p.add_argument("--no-dynamics-randomization", action="store_true", help="nominal friction/mass/damping/gain")
    p.add_argument("--release-on", choices=["progress", "success"], default=MONITOR_DEFAULTS.release_on,
                   help="when the runtime hands control back to the base")
    p.add_argument("--stall-without-failure", choices=["base", "keep"], default=MONITOR_DEFAULTS.stall_without_failure,
                   help="a recovery that stalls while the selector sees no failure: keep the recovery policy driving "
                        "(default) or hand back to the base (stack's whole-episode residuals lost most runtime episodes "
                        "to the hand-back, docs/experiments.md)")
    p.add_argument("--recovery-stall-steps", type=positive_int, default=None,
                   help="re-diagnose every recovery after this many steps without task progress, overriding the "
                        "manifest (default: each policy's window from the export, experiments.export "
                        f"--recovery-stall-steps, else the runtime's {MONITOR_DEFAULTS.recovery_stall_steps}); for "
                        "choosing a window with --states=train (pick_place: 100, docs/experiments.md sessions 24-25)")
    p.add_argument("--recovery-progress-from", choices=["recovery", "episode"], default=MONITOR_DEFAULTS.recovery_progress_from,
                   help="a recovery's progress counts from where it began (default) or must beat the episode's best "
                        "progress (the rule before session 30)")
    p.add_argument("--max-residual-norm", type=positive_float, default=None,
                   help="override the manifest's residual norm cap (> 0; a tiny cap such as 1e-6 switches residuals off "
                        "while the runtime still switches: an ablation)")
    p.add_argument("--base", default="onnx",
                   help="base policy source: 'onnx' (in process) or 'openpi-local' (the ONNX base served over openpi's "
                        "websocket protocol on 127.0.0.1 and queried through the client)")
    p.add_argument("-v", "--verbose", action="store_true", help="log every runtime event")
    return p


def monitor_config(args: argparse.Namespace) -> MonitorConfig:
    """The runtime arms' monitor: an explicit --recovery-stall-steps replaces the manifest's per-policy windows."""
    override = args.recovery_stall_steps is not None
    return MonitorConfig(release_on=args.release_on, stall_without_failure=args.stall_without_failure,
                         recovery_stall_steps=args.recovery_stall_steps if override else MONITOR_DEFAULTS.recovery_stall_steps,
                         policy_stall_steps=not override, recovery_progress_from=args.recovery_progress_from)


def load_export_and_bank(run: Path, export_dir: Path, console) -> tuple:
    """(manifest, bank arrays, bank modes) of a run: its exported models' manifest, exporting first when `export_dir`
    has none, and its failure bank (shared with experiments.tune_runtime)."""
    import numpy as np

    from recovla_jax.runtime.manifest import MANIFEST_NAME, load_manifest
    from recovla_jax.utils.run_dirs import bank_dir

    if not (export_dir / MANIFEST_NAME).exists():
        console.print(f"[yellow]{export_dir} has no manifest: exporting first[/]")
        from experiments.export import main as export_main

        export_main([f"--run={run}", f"--out={export_dir}"])
    bdir = bank_dir(run)
    with np.load(bdir / "bank.npz") as z:
        bank = {k: z[k] for k in z.files}
    return load_manifest(export_dir), bank, tuple(json.loads((bdir / "bank.json").read_text())["modes"])


def configure_runtime_logging(verbose: bool) -> None:
    """Per-step runtime events (switches, safety clamps) go to episodes.jsonl; the terminal shows them only with -v,
    else thousands of episodes would print a warning per clamped step over the progress bar."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.ERROR, format="%(name)s %(message)s")


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    from recovla_jax.evaluation.sim2sim import FAILURE_ARMS, NOMINAL_ARMS, Sim2SimConfig, Sim2SimEvaluator, write_report
    from recovla_jax.runtime.onnx_policy import OnnxBasePolicy
    from recovla_jax.runtime.robots.native import NativeDynamics

    console = Console()
    configure_runtime_logging(args.verbose)
    run = Path(args.run)
    export_dir = Path(args.export_dir) if args.export_dir else run / "export"
    manifest, bank, bank_modes = load_export_and_bank(run, export_dir, console)

    import numpy as np

    results_path = run / "results.json"
    mjx = json.loads(results_path.read_text()).get("modes") if results_path.exists() else None
    if mjx is None:
        console.print("[yellow]no results.json in the run: MJX columns will read n/a[/]")

    dyn = NativeDynamics().model_dump()
    if args.no_dynamics_randomization:
        dyn.update(friction=(1.0, 1.0), mass=(1.0, 1.0), damping=(1.0, 1.0), actuator_gain=(1.0, 1.0))
    if args.obs_noise is not None:
        dyn["obs_noise_std"] = args.obs_noise
    if args.latency is not None:
        dyn["action_latency_steps"] = args.latency
    dynamics = NativeDynamics(**dyn)
    cfg = Sim2SimConfig(episodes_per_mode=args.episodes_per_mode, nominal_episodes=args.nominal_episodes, seed=args.seed,
                        max_steps=args.max_steps, dynamics=dynamics, states=args.states,
                        monitor=monitor_config(args),
                        safety_overrides={} if args.max_residual_norm is None else {"max_residual_norm": args.max_residual_norm})

    server = None
    if args.base == "onnx":
        base = OnnxBasePolicy(export_dir, manifest.base_policy)
    elif args.base == "openpi-local":
        from recovla_jax.runtime.robots.openpi import OpenPIBasePolicy, OpenPIClient, serve_policy

        onnx_base = OnnxBasePolicy(export_dir, manifest.base_policy)
        server, _ = serve_policy(lambda obs: {"actions": onnx_base.act(obs["observation/state"])[None].astype(np.float32)},
                                 metadata={"policy": manifest.base_policy.name, "action_horizon": 1})
        client = OpenPIClient("127.0.0.1", server.socket.getsockname()[1])
        base = OpenPIBasePolicy(client, prompt=manifest.instruction)
    else:
        raise SystemExit(f"unknown --base {args.base!r}: use 'onnx' or 'openpi-local'")

    evaluator = Sim2SimEvaluator(export_dir, manifest, base, cfg)
    n_fail = sum(len(idx) for idx, _ in evaluator.failure_starts(bank, bank_modes).values())
    total = n_fail * len(FAILURE_ARMS) + args.nominal_episodes * len(NOMINAL_ARMS)
    split_label = "held-out" if args.states == "heldout" else "TRAIN"
    console.print(f"sim2sim: {n_fail} {split_label} failure states x {len(FAILURE_ARMS)} arms + {args.nominal_episodes} nominal "
                  f"x {len(NOMINAL_ARMS)} arms on native MuJoCo, base={args.base}")
    t0 = time.time()
    counts = {"ok": 0, "done": 0}
    progress = Progress(TextColumn("[bold]{task.fields[group]:>20}"), BarColumn(), MofNCompleteColumn(),
                        TextColumn("{task.fields[eps]:6.1f} episodes/s"), TextColumn("success so far {task.fields[succ]:5.1%}"),
                        TimeElapsedColumn(), TimeRemainingColumn(), console=console)
    with progress:
        bar = progress.add_task("sim2sim", total=total, group="", eps=0.0, succ=0.0)

        def on_episode(group: str, arm: str, ok: bool) -> None:
            counts["done"] += 1
            counts["ok"] += int(ok)
            progress.update(bar, advance=1, group=f"{group}/{arm}", eps=counts["done"] / max(time.time() - t0, 1e-9),
                            succ=counts["ok"] / counts["done"])

        results = evaluator.run(bank, bank_modes, mjx, on_episode)
    if server is not None:
        client.close()
        server.shutdown()
    results.update({
        "task": manifest.task, "run_dir": str(run.absolute()), "export_dir": str(export_dir.absolute()),
        "max_steps": evaluator.max_steps, "rate_hz": manifest.control.rate_hz, "wall_seconds": time.time() - t0,
        "hand_back": evaluator.hand_back,
        "config": {"backend": args.backend, "base": args.base, "seed": args.seed, "states": args.states,
                   "episodes_per_mode": args.episodes_per_mode, "nominal_episodes": args.nominal_episodes,
                   "dynamics": dynamics.model_dump(mode="json"), "monitor": cfg.monitor.model_dump(),
                   "safety": evaluator.runtimes["runtime_oracle"].safety.cfg.model_dump(mode="json")},
    })
    out = Path(args.out) if args.out else run / ("sim2sim" if args.states == "heldout" else "sim2sim-train")
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = write_report(results, out)
    console.print(mpath.read_text())
    console.print(f"[bold green]wrote[/] {jpath} and {mpath}")
    return results


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        sys.exit(130)
