"""Zero-shot sim-to-sim evaluation: exported ONNX policies, robot runtime, native MuJoCo, held-out dynamics.

For each failure mode, every held-out failure-bank state (split == heldout) is started once per arm on
the native MuJoCo robot with its own randomized dynamics (the same draw for every arm of a state, from a
seed disjoint from training's):
  base            the ONNX base policy alone (through the runtime's safety layer, recovery disabled)
  policy          the recovery residual of the state's mode applied from the first step to the end, as the
                  MJX evaluation did (isolates the simulator/dynamics gap); for policies trained with
                  hand-back, applied in exactly the steps the simulator labels a failure, as in MJX
  runtime_oracle  the full runtime: monitor -> oracle selector (the simulator's label of the current
                  native state) -> recovery policy -> back to base on progress/success
  runtime_rules   the same with the rules-based selector on the (noisy) observation
Nominal starts compare base alone with the runtime (a recovery module must not break what worked).
`Sim2SimConfig.states="train"` starts the bank's train states instead: for choosing runtime settings (such as the
stall window) without looking at held-out states; its rates are not results and carry no MJX comparison.
Success rates come with Wilson 95% CIs and n, next to the MJX numbers of the same policies (results.json).
Imports no JAX for the drawer (its native robot is a NumPy twin); other tasks simulate the robot's
sensors with the JAX task's own functions (`evaluation.native_task`), the runtime itself stays JAX-free.
"""

from __future__ import annotations

import json
import statistics
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np

from recovla_jax.evaluation.paired import PER_STATE_KEY, decode_outcomes, format_p, mcnemar_exact
from recovla_jax.evaluation.stats import wilson
from recovla_jax.runtime.manifest import ExportManifest
from recovla_jax.runtime.monitor import MonitorConfig
from recovla_jax.runtime.onnx_policy import PolicyLibrary
from recovla_jax.runtime.robots.base import BasePolicySource
from recovla_jax.runtime.robots.mujoco_drawer import NativeDrawerRobot
from recovla_jax.runtime.robots.native import NativeDynamics, NativeRobot
from recovla_jax.runtime.runtime import RecoveryRuntime
from recovla_jax.runtime.safety import SafetyConfig
from recovla_jax.runtime.selectors import DrawerRulesSelector, FunctionSelector, OracleSelector, Selector

if TYPE_CHECKING:  # the task package imports JAX; the annotation needs none of it
    from recovla_jax.tasks.base import Task

FAILURE_ARMS = ("base", "policy", "runtime_oracle", "runtime_rules")
NOMINAL_ARMS = ("base", "runtime_oracle", "runtime_rules")
TRANSFER_ARMS = ("policy", "runtime_rules")  # native arms compared with MJX state by state
SPLIT_CODES = {"train": 0, "heldout": 1}  # the bank's `split` column (failures.bank; imported there with JAX)
STATE_FIELDS = ("qpos", "qvel", "mocap_pos", "mocap_quat", "ctrl")  # a bank row (the scene has no mocap bodies: empty)
# The whole-episode residual arm: recovery from the first step, never handed back, never re-diagnosed (a policy's
# own manifest stall window is ignored too).
POLICY_MONITOR = MonitorConfig(check_on_start=True, check_every=0, stall_steps=10_000, release_on="success",
                               recovery_stall_steps=10_000, policy_stall_steps=False, confirm_checks=1)
# The same arm for policies trained with hand-back (MJX `ResidualEnv(hand_back=True)`): the state's own
# mode's residual acts in exactly the steps where the simulator labels the native state a failure.
HAND_BACK_POLICY_MONITOR = MonitorConfig(check_on_start=True, check_every=1, periodic_requires_stall=False, confirm_checks=1,
                                         stall_steps=10_000, release_on="success", recovery_stall_steps=10_000,
                                         policy_stall_steps=False, hand_back_check_every=1)


@dataclass
class Sim2SimConfig:
    episodes_per_mode: int | None = None  # None: every held-out state
    nominal_episodes: int = 100
    seed: int = 0
    max_steps: int | None = None  # None: the manifest's training episode length
    dynamics: NativeDynamics = field(default_factory=NativeDynamics)
    monitor: MonitorConfig = field(default_factory=MonitorConfig)
    safety_overrides: dict = field(default_factory=dict)
    states: str = "heldout"  # which bank split to start: "heldout" (results) or "train" (choosing runtime settings)

    def __post_init__(self) -> None:
        if self.states not in SPLIT_CODES:
            raise ValueError(f"Sim2SimConfig.states={self.states!r}: valid are {sorted(SPLIT_CODES)}")


@dataclass
class EpisodeResult:
    success: bool
    steps: int
    summary: dict
    switches: list[dict] = field(default_factory=list)  # {"step", "to", "reason"} per runtime switch, in order

    def record(self, group: str, arm: str, state: int | None) -> dict:
        """One line of episodes.jsonl: enough to see where a runtime arm lost an episode another arm won."""
        return {"group": group, "arm": arm, "state": state, "success": self.success, "steps": self.steps,
                "recovery_steps": self.summary["recovery_steps"], "switches": self.switches}


def episode_seed(seed: int, group: str, index: int) -> int:
    """Deterministic per-(group, state) seed; held out from training's JAX keys (different generator)."""
    return (zlib.crc32(f"sim2sim/{seed}/{group}/{index}".encode()) & 0x7FFFFFFF) + 1_000_003


def make_native_robot(manifest: ExportManifest, scene: Path | None, dynamics: NativeDynamics,
                      seed: int) -> tuple[NativeRobot, Selector]:
    """The native robot of the manifest's task and its observation-only rules selector.

    The drawer has JAX-free NumPy twins; other tasks evaluate their JAX functions on the native state.
    """
    scene_kw = {} if scene is None else {"scene": scene}
    if manifest.task == "drawer":
        robot = NativeDrawerRobot(dynamics, seed=seed, task_config=manifest.task_config, ctrl_dt=manifest.control.ctrl_dt,
                                  **scene_kw)
        return robot, DrawerRulesSelector(manifest.progress.success_threshold)
    import mujoco

    from recovla_jax.evaluation.native_task import JaxNativeTask
    from recovla_jax.tasks import get_task

    task = get_task(manifest.task, manifest.task_config)
    model = mujoco.MjModel.from_xml_path(str(scene)) if scene is not None else task.mj_model
    robot = NativeRobot(model, JaxNativeTask(task, model), dynamics, seed=seed, ctrl_dt=manifest.control.ctrl_dt)
    return robot, rules_selector(task)


def rules_selector(task: Task) -> FunctionSelector:
    """The runtime's observation-only selector: the rule that fires, or None ("no failure, keep the base").

    Not `Task.rules_classify`: that offline hook always names the closest story (it is handed failure
    states), and at runtime it sent every stalled nominal pick_place episode into recovery (62% -> 0%).
    """
    from importlib import import_module

    rules = import_module(task.rules_module)
    return FunctionSelector("rules", lambda obs: rules.classify(obs.state).mode)


def run_episode(robot: NativeRobot, runtime: RecoveryRuntime, start: dict | None, seed: int, max_steps: int,
                physics_times: list[float] | None = None) -> EpisodeResult:
    obs = robot.reset(start, seed=seed)
    runtime.reset(grip=robot.grip_command())
    for k in range(max_steps):
        action = runtime.step(obs)
        t0 = time.perf_counter()
        robot.apply_action(action)
        if physics_times is not None:
            physics_times.append(time.perf_counter() - t0)
        obs = robot.get_observation()
        if robot.success():
            return EpisodeResult(True, k + 1, runtime.summary(), _switches(runtime))
    return EpisodeResult(False, max_steps, runtime.summary(), _switches(runtime))


def _switches(runtime: RecoveryRuntime) -> list[dict]:
    return [{"step": e.step, "to": e.detail["to"], "reason": e.detail["reason"]} for e in runtime.events if e.kind == "switch"]


class Sim2SimEvaluator:
    """Builds one runtime per arm over shared ONNX sessions and runs the episodes."""

    def __init__(self, export_dir: Path, manifest: ExportManifest, base: BasePolicySource, cfg: Sim2SimConfig):
        self.manifest = manifest
        self.cfg = cfg
        self.max_steps = cfg.max_steps or manifest.control.episode_length
        scene = None if manifest.scene is None else Path(export_dir) / manifest.scene.file
        self.robot, rules = make_native_robot(manifest, scene, cfg.dynamics, cfg.seed)
        self.library = PolicyLibrary(export_dir, manifest)
        safety = SafetyConfig.from_manifest(manifest, **cfg.safety_overrides)
        clock = lambda: self.robot.time  # noqa: E731  (simulated time: observations are never stale here)
        self.fixed = OracleSelector()
        selectors: dict[str, Selector] = {"oracle": OracleSelector(self.robot.privileged_mode), "rules": rules}
        self.hand_back = any(p.hand_back for p in manifest.recovery_policies)
        # hand-back policy arm: the state's mode (self.fixed) while the simulator labels any failure, else none
        gated = FunctionSelector("oracle-gated",
                                 lambda obs: self.fixed.label if self.robot.privileged_mode() is not None else None)

        def rt(selector: Selector, monitor: MonitorConfig, enabled: bool = True) -> RecoveryRuntime:
            return RecoveryRuntime(manifest, base, self.library, selector, monitor, safety, clock, enabled)

        self.runtimes = {
            "base": rt(self.fixed, cfg.monitor, enabled=False),
            "policy": rt(gated, HAND_BACK_POLICY_MONITOR) if self.hand_back else rt(self.fixed, POLICY_MONITOR),
            "runtime_oracle": rt(selectors["oracle"], cfg.monitor),
            "runtime_rules": rt(selectors["rules"], cfg.monitor),
        }
        self.physics_times: list[float] = []

    def failure_starts(self, bank_arrays: dict[str, np.ndarray], bank_modes: tuple[str, ...]) -> dict[str, tuple]:
        """Mode -> (bank rows to start, how many rows of the mode the split has), for each mode with a recovery
        policy, in the manifest's order: the first `episodes_per_mode` rows of `cfg.states`' split."""
        in_split = np.asarray(bank_arrays["split"]) == SPLIT_CODES[self.cfg.states]
        starts = {}
        for m in self.manifest.failure_modes:
            if m not in self.library:
                continue
            idx = np.flatnonzero(in_split & (np.asarray(bank_arrays["mode"]) == bank_modes.index(m)))
            n = self.cfg.episodes_per_mode
            starts[m] = (idx if n is None else idx[:n], len(idx))
        return starts

    def stall_windows(self) -> dict[str, int]:
        """Recovery policy -> the steps without progress after which the runtime arms re-diagnose its recovery."""
        monitor = self.runtimes["runtime_rules"].monitor
        return {p.name: monitor.stall_window(p.recovery_stall_steps) for p in self.manifest.recovery_policies}

    def failure_episodes(self, bank_arrays: dict[str, np.ndarray], bank_modes: tuple[str, ...], arms: tuple[str, ...],
                         on_episode: Callable[[str, str, bool], None] | None = None) -> dict[str, tuple]:
        """Mode -> (states of the mode in the split, arm -> episode results, episodes.jsonl records): every chosen
        start of the mode once per arm, each state under its own dynamics draw (the same for every arm)."""
        out = {}
        for m, (idx, split_total) in self.failure_starts(bank_arrays, bank_modes).items():
            if len(idx) == 0:
                continue
            results: dict[str, list[EpisodeResult]] = {a: [] for a in arms}
            records = []
            for i in idx:
                start = {k: np.asarray(bank_arrays[k][i]) for k in STATE_FIELDS}
                seed = episode_seed(self.cfg.seed, m, int(i))
                self.fixed.set_label(m)
                for arm in arms:
                    r = run_episode(self.robot, self.runtimes[arm], start, seed, self.max_steps, self.physics_times)
                    results[arm].append(r)
                    records.append(r.record(m, arm, int(i)))
                    if on_episode:
                        on_episode(m, arm, r.success)
            out[m] = (int(split_total), results, records)
        return out

    def run(self, bank_arrays: dict[str, np.ndarray], bank_modes: tuple[str, ...],
            mjx_results: dict | None, on_episode: Callable[[str, str, bool], None] | None = None) -> dict:
        cfg = self.cfg
        out: dict = {"modes": {}, "nominal": {}, "episodes": [], "states": cfg.states, "stall_windows": self.stall_windows()}
        if cfg.states != "heldout":
            mjx_results = None  # MJX's numbers are held-out: no comparison for train states
        episodes = self.failure_episodes(bank_arrays, bank_modes, FAILURE_ARMS, on_episode)
        for m, (split_total, arms, records) in episodes.items():
            out["episodes"] += records
            mjx = (mjx_results or {}).get(m, {})
            # MJX's cells cover every held-out state; against a native subset (--episodes-per-mode) a difference
            # would partly be which states were picked, so no gap is computed then
            versus = mjx if len(arms["base"]) == split_total else {}
            native = {a: _rate(rs) for a, rs in arms.items()}
            entry = {
                "n": len(arms["base"]), f"{cfg.states}_states": split_total,
                "mjx": {"base": mjx.get("base"), "recovla": mjx.get("recovla")},
                "native": native,
                "gap": {
                    "policy_minus_mjx_recovla": _gap(native["policy"], versus.get("recovla")),
                    "runtime_oracle_minus_mjx_recovla": _gap(native["runtime_oracle"], versus.get("recovla")),
                    "base_minus_mjx_base": _gap(native["base"], versus.get("base")),
                },
                "runtime": {a: _aggregate([r.summary for r in rs]) for a, rs in arms.items()},
            }
            try:
                transfer = {a: state_transfer(mjx, records, a) for a in TRANSFER_ARMS}
            except ValueError as e:  # an edited or mismatched results.json: keep the native episodes, say why
                transfer, entry["transfer_error"] = {}, str(e)
            if any(transfer.values()):
                entry["transfer"] = transfer
            out["modes"][m] = entry
        if cfg.nominal_episodes > 0:
            arms = {a: [] for a in NOMINAL_ARMS}
            for i in range(cfg.nominal_episodes):
                seed = episode_seed(cfg.seed, "nominal", i)
                for arm in NOMINAL_ARMS:
                    r = run_episode(self.robot, self.runtimes[arm], None, seed, self.max_steps, self.physics_times)
                    arms[arm].append(r)
                    out["episodes"].append(r.record("nominal", arm, None))
                    if on_episode:
                        on_episode("nominal", arm, r.success)
            out["nominal"] = {"n": cfg.nominal_episodes, "native": {a: _rate(rs) for a, rs in arms.items()},
                              "runtime": {a: _aggregate([r.summary for r in rs]) for a, rs in arms.items()}}
        modes = list(out["modes"])
        if modes:
            out["average"] = {a: float(np.mean([out["modes"][m]["native"][a]["rate"] for m in modes])) for a in FAILURE_ARMS}
            mjx_r = [out["modes"][m]["mjx"]["recovla"] for m in modes]
            mjx_b = [out["modes"][m]["mjx"]["base"] for m in modes]
            out["average"]["mjx_recovla"] = float(np.mean([r["rate"] for r in mjx_r])) if all(mjx_r) else None
            out["average"]["mjx_base"] = float(np.mean([r["rate"] for r in mjx_b])) if all(mjx_b) else None
        out["latency_ms"] = self.latency()
        return out

    def latency(self) -> dict:
        """Median and p99 wall time per control step (ms): base policy, residual ONNX, whole runtime step, physics."""
        def stats(xs: list[float]) -> dict | None:
            if not xs:
                return None
            a = np.asarray(xs) * 1e3
            return {"median": float(np.median(a)), "p99": float(np.percentile(a, 99)), "n": int(a.size)}

        rts = self.runtimes.values()
        return {
            "base_policy": stats([x for r in rts for x in r.timings.base]),  # ONNX in process, or an openpi round trip
            "residual_onnx": stats([x for r in rts for x in r.timings.residual]),
            "runtime_step": stats([x for r in rts for x in r.timings.step]),
            "native_physics_control_step": stats(self.physics_times),
        }


def state_transfer(mjx: dict, records: list[dict], arm: str) -> dict | None:
    """MJX's outcome beside the native arm's for each held-out state both ran (matched by bank row): how many
    states transfer (both), fail only natively (mjx_only), only in MJX (native_only) or in both, with McNemar's exact
    p on the states they disagree on. None when the MJX cell has no per-state outcomes and rows (runs before
    session 32)."""
    cell, rows = mjx.get("recovla") or {}, mjx.get("heldout_rows")
    if not cell.get(PER_STATE_KEY) or rows is None:
        return None
    mjx_ok = decode_outcomes(cell[PER_STATE_KEY]["success"])
    if len(rows) != mjx_ok.size:
        raise ValueError(f"MJX cell holds {mjx_ok.size} outcomes for {len(rows)} held-out rows")
    by_row = dict(zip((int(r) for r in rows), mjx_ok.tolist()))
    pairs = [(by_row[e["state"]], bool(e["success"])) for e in records if e["arm"] == arm and e["state"] in by_row]
    if not pairs:
        return None
    a, b = (np.array(x, bool) for x in zip(*pairs))
    r = mcnemar_exact(a, b)
    return {"n": r["n"], "both": int(np.sum(a & b)), "mjx_only": r["only_a"], "native_only": r["only_b"],
            "neither": int(np.sum(~a & ~b)), "p_value": r["p_value"]}


def _rate(results: list[EpisodeResult]) -> dict:
    return wilson(sum(r.success for r in results), len(results)).as_dict()


def _gap(native: dict, mjx: dict | None) -> float | None:
    return None if mjx is None else float(native["rate"] - mjx["rate"])


def _aggregate(summaries: list[dict]) -> dict:
    """Mean per episode of runtime counters (switches, recovery steps, safety interventions, watchdog holds)."""
    if not summaries:
        return {}
    keys = ("recovery_steps", "safety_interventions", "watchdog_holds")
    out = {k: statistics.fmean(s[k] for s in summaries) for k in keys}
    out["switches"] = statistics.fmean(s["events"].get("switch", 0) for s in summaries)
    out["episodes_with_recovery"] = int(sum(s["recovery_steps"] > 0 for s in summaries))
    return out


def runtime_losses(episodes: list[dict]) -> dict[tuple[str, str], dict[str, int]]:
    """Per (failure mode, runtime arm): episodes the `policy` arm won and the runtime lost, split by the runtime's
    first switch (none / to another mode's policy / to the state's own mode). Only modes with such losses appear."""
    won = {(e["group"], e["state"]) for e in episodes if e["arm"] == "policy" and e["success"]}
    out: dict[tuple[str, str], dict[str, int]] = {}
    for e in episodes:
        if not e["arm"].startswith("runtime") or e["success"] or (e["group"], e["state"]) not in won:
            continue
        c = out.setdefault((e["group"], e["arm"]), {"lost": 0, "never_switched": 0, "other_mode": 0, "own_mode": 0})
        c["lost"] += 1
        first = e["switches"][0]["to"] if e["switches"] else None
        c["never_switched" if first is None else "own_mode" if first == e["group"] else "other_mode"] += 1
    return out


# ------------------------------------------------------------------------------------------------ report
def _fmt(r: dict | None) -> str:
    if not r:
        return "n/a"
    return f"{100 * r['rate']:.1f}% [{100 * r['ci_low']:.1f}, {100 * r['ci_high']:.1f}] (n={r['trials']})"


def _pp(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:+.1f} pp"


def _stall_text(results: dict) -> str:
    """'N steps', or each policy's window where they differ (manifest windows, experiments.export)."""
    windows = results.get("stall_windows") or {}
    if len(set(windows.values())) > 1:
        return ", ".join(f"{n} steps ({p})" for p, n in windows.items())
    n = next(iter(windows.values())) if windows else results["config"]["monitor"].get("recovery_stall_steps", "?")
    return f"{n} steps"


def write_report(results: dict, out_dir: Path) -> tuple[Path, Path]:
    out_dir = Path(out_dir)
    jpath, mpath, epath = out_dir / "sim2sim.json", out_dir / "sim2sim.md", out_dir / "episodes.jsonl"
    episodes = results.get("episodes", [])
    jpath.write_text(json.dumps({k: v for k, v in results.items() if k != "episodes"}, indent=2))
    epath.write_text("".join(json.dumps(e) + "\n" for e in episodes))
    c = results["config"]
    lines = [
        f"# Zero-shot sim-to-sim: task `{results['task']}`, native MuJoCo",
        "",
        f"- exported policies: `{results['export_dir']}`; base source `{c['base']}`; seed {c['seed']}; "
        f"{results['max_steps']} control steps per episode at {results['rate_hz']:.0f} Hz",
        f"- held-out dynamics per episode: friction x{c['dynamics']['friction']}, mass x{c['dynamics']['mass']}, "
        f"damping x{c['dynamics']['damping']}, actuator gain x{c['dynamics']['actuator_gain']}, observation noise "
        f"{c['dynamics']['obs_noise_std']}, action latency {c['dynamics']['action_latency_steps']} steps, start jitter "
        f"{c['dynamics']['start_noise']} m",
        "- arms: `base` alone; `policy` = the residual as MJX evaluated it (" + ("hand-back: on exactly while the simulator "
        "labels a failure" if results.get("hand_back") else "on for the whole episode") + "); `runtime` = monitor + "
        "selector (oracle: simulator label of the native state; rules: observation) + switching + safety"
        + (" (hand-back policies: released as soon as the selector sees no failure)" if results.get("hand_back") else "")
        + "; a stalled recovery whose re-diagnosis sees no failure "
        + ("keeps its policy" if c["monitor"].get("stall_without_failure") == "keep" else "goes back to the base")
        + f"; a recovery is re-diagnosed after {_stall_text(results)} without progress",
        "",
        *(["", "**TRAIN failure states** (the policies trained on them): for choosing runtime settings, not results.", ""]
          if results.get("states") == "train" else []),
        f"## Recovery from {'train' if results.get('states') == 'train' else 'held-out'} failure states (Wilson 95% CI)",
        "",
        ("| failure mode | MJX base | MJX ReCoVLA | native base | native policy | native runtime (oracle) "
         "| native runtime (rules) | gap policy vs MJX |"),
        "|---|---|---|---|---|---|---|---|",
    ]
    for m, e in results["modes"].items():
        n = e["native"]
        total = e.get("heldout_states", e.get("train_states"))
        note = "" if e["n"] == total else f" (first {e['n']} of {total})"
        lines.append(f"| {m}{note} | {_fmt(e['mjx']['base'])} | {_fmt(e['mjx']['recovla'])} | {_fmt(n['base'])} | "
                     f"{_fmt(n['policy'])} | {_fmt(n['runtime_oracle'])} | {_fmt(n['runtime_rules'])} | "
                     f"{_pp(e['gap']['policy_minus_mjx_recovla'])} |")
    if "average" in results:
        a = results["average"]
        f = lambda x: "n/a" if x is None else f"{100 * x:.1f}%"  # noqa: E731
        lines.append(f"| **average** | {f(a['mjx_base'])} | {f(a['mjx_recovla'])} | {f(a['base'])} | {f(a['policy'])} | "
                     f"{f(a['runtime_oracle'])} | {f(a['runtime_rules'])} | |")
    transfer = [(m, arm, t) for m, e in results["modes"].items() for arm, t in (e.get("transfer") or {}).items() if t]
    if transfer:
        lines += ["", "## State by state: MJX against native", "",
                  "Each held-out state's outcome in MJX (the trained policy) beside the native arm's on the same state "
                  "(native dynamics and noise are drawn apart from MJX's): how much of the gap is states lost in "
                  "transfer and how much states gained; McNemar's exact p on the states they disagree on.", "",
                  "| failure mode | native arm | n | both succeed | MJX only | native only | neither | McNemar p |",
                  "|---|---|---|---|---|---|---|---|"]
        for m, arm, t in transfer:
            lines.append(f"| {m} | {arm} | {t['n']} | {t['both']} | {t['mjx_only']} | {t['native_only']} | {t['neither']} "
                         f"| {format_p(t['p_value'])} |")
    for m, e in results["modes"].items():
        if e.get("transfer_error"):
            lines += ["", f"{m}: no state-by-state comparison: {e['transfer_error']}"]
    lost = runtime_losses(episodes)
    if lost:
        lines += ["", "## Where the runtime loses what the policy alone recovers", "",
                  "Episodes (same state, dynamics and seed) the residual on for the whole episode recovers and the runtime "
                  "does not, by the runtime's first switch; per-episode switches in `episodes.jsonl`.", "",
                  ("| failure mode | runtime arm | lost | never switched | first switch to another mode "
                   "| switched to the state's mode |"),
                  "|---|---|---|---|---|---|"]
        for (m, arm), n in lost.items():
            lines.append(f"| {m} | {arm} | {n['lost']} | {n['never_switched']} | {n['other_mode']} | {n['own_mode']} |")
    if results.get("nominal"):
        nom = results["nominal"]
        lines += ["", "## Nominal task (runtime must not break what worked)", "",
                  "| arm | success | episodes with a recovery switch | mean switches |", "|---|---|---|---|"]
        for arm, r in nom["native"].items():
            rt = nom["runtime"][arm]
            lines.append(f"| {arm} | {_fmt(r)} | {rt.get('episodes_with_recovery', 0)} | {rt.get('switches', 0):.2f} |")
    lat = results["latency_ms"]
    lines += ["", "## Latency per control step (ms, this machine)", "", "| part | median | p99 | n |", "|---|---|---|---|"]
    for k, v in lat.items():
        if v:
            lines.append(f"| {k} | {v['median']:.3f} | {v['p99']:.3f} | {v['n']} |")
    lines += ["", f"Wall time {results['wall_seconds']:.1f} s."]
    mpath.write_text("\n".join(lines) + "\n")
    return jpath, mpath
