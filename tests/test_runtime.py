"""Robot runtime: no JAX, safety limits, watchdog, switching, openpi protocol, native MuJoCo == MJX task."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from recovla_jax.runtime.manifest import load_manifest
from recovla_jax.runtime.monitor import FailureMonitor, MonitorConfig
from recovla_jax.runtime.onnx_policy import PolicyLibrary
from recovla_jax.runtime.robots.base import Observation
from recovla_jax.runtime.runtime import RecoveryRuntime
from recovla_jax.runtime.selectors import OracleSelector

ROOT = Path(__file__).resolve().parents[1]
BLOCKED = ("jax", "jaxlib", "flax", "brax", "optax", "orbax", "jax2onnx", "chex")


# ---------------------------------------------------------------------------------------------- no JAX
def test_runtime_and_native_evaluation_run_without_jax(fake_run, fake_export, tmp_path):
    """The whole robot side (runtime, native robot, openpi client, sim2sim CLI) with JAX unimportable."""
    out = tmp_path / "sim2sim"
    code = textwrap.dedent(f"""
        import importlib.abc, sys
        BLOCKED = {BLOCKED!r}
        class Block(importlib.abc.MetaPathFinder):
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ImportError(f"{{name}} is blocked: the runtime must not import JAX")
        sys.meta_path.insert(0, Block())
        import recovla_jax.runtime.drawer_rules  # shared with the JAX task: must load nothing heavy
        assert "onnxruntime" not in sys.modules and "pydantic" not in sys.modules
        import recovla_jax.runtime, recovla_jax.runtime.runtime, recovla_jax.runtime.robots.mujoco_drawer
        import recovla_jax.runtime.robots.openpi, recovla_jax.evaluation.sim2sim
        from experiments.evaluate import main
        main(["--run={fake_run}", "--export-dir={fake_export}", "--out={out}", "--episodes-per-mode=1",
              "--nominal-episodes=1", "--max-steps=12", "--base=openpi-local"])
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set(BLOCKED))
        assert not loaded, loaded
        print("NO_JAX_OK")
    """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "NO_JAX_OK" in proc.stdout
    res = json.loads((out / "sim2sim.json").read_text())
    assert set(res["modes"]) == {"missed_handle", "slipped_off", "misaligned_gripper"}
    for e in res["modes"].values():
        assert e["n"] == 1 and set(e["native"]) == {"base", "policy", "runtime_oracle", "runtime_rules"}
        # MJX's cell is over all 4 held-out states, the native one over the first: no gap between different states
        assert e["mjx"]["recovla"]["trials"] == 4 and e["gap"]["policy_minus_mjx_recovla"] is None
        # ... but state by state the one native episode pairs with MJX's outcome of the same bank row
        assert e["transfer"]["policy"]["n"] == 1 and e["transfer"]["runtime_rules"]["n"] == 1
    assert res["nominal"]["n"] == 1 and res["latency_ms"]["base_policy"]["n"] > 0
    assert "| missed_handle" in (out / "sim2sim.md").read_text()
    assert "## State by state: MJX against native" in (out / "sim2sim.md").read_text()
    assert "a stalled recovery whose re-diagnosis sees no failure keeps its policy" in (out / "sim2sim.md").read_text()
    assert "re-diagnosed after 50 steps without progress" in (out / "sim2sim.md").read_text()
    assert res["stall_windows"] == {"conditioned": 50, "missed_handle": 50}  # no window in the manifest: the runtime's
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert "episodes" not in res and len(episodes) == 3 * 4 + 1 * 3  # modes x failure arms + nominal x nominal arms
    assert {(e["group"], e["arm"]) for e in episodes} >= {("missed_handle", "runtime_rules"), ("nominal", "base")}
    for e in episodes:
        assert 1 <= e["steps"] <= 12 and all(sw["step"] <= e["steps"] for sw in e["switches"])
        assert (e["state"] is None) == (e["group"] == "nominal")
        assert e["arm"] != "base" or (not e["switches"] and e["recovery_steps"] == 0)


def test_runtime_losses_split_by_the_runtimes_first_switch():
    from recovla_jax.evaluation.sim2sim import runtime_losses

    def ep(arm, state, success, *to):
        return {"group": "jam", "arm": arm, "state": state, "success": success,
                "switches": [{"step": 1 + k, "to": t, "reason": "r"} for k, t in enumerate(to)]}

    episodes = [ep("policy", 0, True, "jam"), ep("runtime_rules", 0, False),             # never switched
                ep("policy", 1, True, "jam"), ep("runtime_rules", 1, False, "tilt", "jam"),  # first to another mode
                ep("policy", 2, True, "jam"), ep("runtime_rules", 2, False, "jam", None),    # own mode, handed back
                ep("policy", 3, False, "jam"), ep("runtime_rules", 3, False),                # the policy lost it too
                ep("policy", 4, True, "jam"), ep("runtime_rules", 4, True, "jam")]           # both won
    assert runtime_losses(episodes) == {
        ("jam", "runtime_rules"): {"lost": 3, "never_switched": 1, "other_mode": 1, "own_mode": 1}}
    assert runtime_losses(episodes[6:]) == {}


def test_state_transfer_matches_mjx_and_native_outcomes_by_bank_row():
    """Per held-out state, MJX's outcome beside a native arm's, matched by bank row whatever the order or subset
    the native evaluation ran; no per-state MJX outcomes (older runs) gives None."""
    from recovla_jax.evaluation.sim2sim import state_transfer

    mjx = {"recovla": {"successes": 3, "trials": 5, "per_state": {"success": "11100", "episodes": "x"}},
           "heldout_rows": [40, 41, 42, 43, 44]}
    records = [{"arm": "policy", "state": r, "success": ok} for r, ok in ((44, True), (40, True), (41, False), (42, False))]
    records.append({"arm": "runtime_rules", "state": 40, "success": True})
    t = state_transfer(mjx, records, "policy")  # row 43 not run natively; 44: native only; 41, 42: MJX only
    assert t == {"n": 4, "both": 1, "mjx_only": 2, "native_only": 1, "neither": 0, "p_value": 1.0}
    assert state_transfer(mjx, records, "runtime_rules")["both"] == 1
    assert state_transfer({"recovla": {"successes": 3, "trials": 5}}, records, "policy") is None
    with pytest.raises(ValueError, match="5 outcomes for 4 held-out rows"):
        state_transfer({**mjx, "heldout_rows": [40, 41, 42, 43]}, records, "policy")


# ---------------------------------------------------------------------------------------------- stubs
class StubBase:
    def __init__(self, action=None):
        self.action = np.zeros(7) if action is None else np.asarray(action, float)

    def reset(self) -> None:
        pass

    def act(self, obs: Observation) -> np.ndarray:
        return self.action


class StubPolicy:
    """A recovery policy that returns whatever the test scripts (huge, NaN, ...)."""

    def __init__(self, outputs):
        self.outputs = list(outputs)
        self.entry = SimpleNamespace(name="stub")

    def residual(self, state, base, mode):
        return self.outputs.pop(0) if self.outputs else np.full(7, 0.01)


def _obs(progress: float = 0.0, t: float = 0.0, tcp=(0.3, 0.0, 0.3)) -> Observation:
    s = np.zeros(24, np.float32)
    s[0:3] = tcp
    s[22] = progress
    return Observation(s, t)


def _runtime(manifest, library, base=None, label="missed_handle", clock=lambda: 0.0, **monitor):
    sel = OracleSelector()
    sel.set_label(label)
    cfg = MonitorConfig(**{"confirm_checks": 1, **monitor})
    return RecoveryRuntime(manifest, base or StubBase(), library, sel, cfg, clock=clock), sel


# ---------------------------------------------------------------------------------------------- safety
def test_safety_limits_hold_under_adversarial_residuals(fake_export, caplog):
    m = load_manifest(fake_export)
    bad = [np.full(7, 1e9), np.full(7, np.nan), np.array([np.inf, -np.inf, 0, 0, 0, 0, 1]), np.full(7, -1e30),
           np.random.default_rng(0).normal(size=7) * 1e6, np.array([0, 0, 0, np.nan, 0, 0, 0])]
    rt, _ = _runtime(m, {"missed_handle": StubPolicy(bad)}, base=StubBase([0.9, -0.9, 0.5, 0, 0, 0, 1.0]))
    cap, lo, hi, mt = (m.safety.max_residual_norm, np.array(m.safety.workspace.low), np.array(m.safety.workspace.high),
                       m.action.max_translation)
    tcp = (hi + lo) / 2
    with caplog.at_level(logging.WARNING, logger="recovla.runtime"):
        for _ in bad:
            a = rt.step(_obs(tcp=tcp))
            assert np.all(np.isfinite(a)) and np.all(a >= m.action.low) and np.all(a <= m.action.high)
            assert np.linalg.norm(a - rt.base.action) <= cap + 1e-9
    notes = [n for e in rt.events if e.kind == "safety" for n in e.detail["interventions"]]
    assert "residual_norm_capped" in notes and "residual_nonfinite_dropped" in notes
    assert "residual_nonfinite_dropped" in caplog.text
    # Workspace: at the high corner, base pushing outward on x and z gets no outward motion.
    rt2, _ = _runtime(m, {"missed_handle": StubPolicy([np.full(7, 0.5)])}, base=StubBase([1, -1, 1, 0, 0, 0, 0]))
    corner = hi - np.array([0.001, 0.0, 0.0])
    a = rt2.step(_obs(tcp=corner))
    assert np.all(corner + a[:3] * mt <= hi + 1e-6) and np.all(corner + a[:3] * mt >= lo - 1e-6)  # float32 obs
    assert "workspace_limited" in rt2.events[-1].detail["interventions"]
    # A non-finite base action means hold: no motion, gripper command kept.
    rt3, _ = _runtime(m, {}, base=StubBase(np.full(7, np.nan)))
    np.testing.assert_array_equal(rt3.step(_obs()), [0, 0, 0, 0, 0, 0, -1.0])
    # ... before any command, with the robot's grip unknown, that hold opens the gripper and says so
    assert "hold_grip_unknown" in [n for e in rt3.events if e.kind == "safety" for n in e.detail["interventions"]]
    rt3.reset(grip=1.0)  # the robot holds its object: the hold keeps the jaws closed, nothing to warn about
    np.testing.assert_array_equal(rt3.step(_obs()), [0, 0, 0, 0, 0, 0, 1.0])
    assert ["base_nonfinite_hold"] == [n for e in rt3.events if e.kind == "safety" for n in e.detail["interventions"]]


def test_stale_observations_trigger_watchdog(fake_export, caplog):
    m = load_manifest(fake_export)
    now = {"t": 10.0}
    rt, _ = _runtime(m, {}, base=StubBase([0.5, 0, 0, 0, 0, 0, 1.0]), clock=lambda: now["t"], label=None)
    a = rt.step(_obs(t=10.0))
    assert a[0] == 0.5 and a[6] == 1.0
    with caplog.at_level(logging.WARNING, logger="recovla.runtime"):
        for _ in range(3):  # 5 control periods old (limit: 3)
            held = rt.step(_obs(t=10.0 - 5 * m.control.ctrl_dt))
            np.testing.assert_array_equal(held, [0, 0, 0, 0, 0, 0, 1.0])  # hold position, keep the grip
    assert "stale observation" in caplog.text
    nan_obs = Observation(np.full(24, np.nan, np.float32), now["t"])
    np.testing.assert_array_equal(rt.step(nan_obs), [0, 0, 0, 0, 0, 0, 1.0])
    assert rt.step(_obs(t=now["t"]))[0] == 0.5  # fresh data: control resumes
    dog = [e for e in rt.events if e.kind == "watchdog"]
    assert [e.detail["reason"].split(":")[0] for e in dog] == ["stale observation", "recovered"]
    assert rt.counts["watchdog_holds"] == 4
    # a robot stamping wall-clock time against the runtime's monotonic clock: every observation is "from the future",
    # which must not pass as fresh (its age would be negative forever)
    held = rt.step(_obs(t=now["t"] + 1.7e9))
    np.testing.assert_array_equal(held, [0, 0, 0, 0, 0, 0, 1.0])
    assert "observation from the future" in rt.events[-1].detail["reason"]
    assert rt.step(_obs(t=now["t"] + 0.5 * m.control.ctrl_dt))[0] == 0.5  # clock jitter under the limit is fine


# ---------------------------------------------------------------------------------------------- switching
def test_runtime_switches_on_diagnosis_and_back_on_progress(fake_export, caplog):
    m = load_manifest(fake_export)
    res = np.array([0.1, 0, 0, 0, 0, 0, 0])
    rt, sel = _runtime(m, {"missed_handle": StubPolicy([res] * 100)}, confirm_checks=2, confirm_every=3,
                       start_confirm_checks=2, release_on="progress")
    with caplog.at_level(logging.INFO, logger="recovla.runtime"):
        acts = [rt.step(_obs(0.0)) for _ in range(4)]  # start check at 1, confirmed at 4
    assert rt.mode == "missed_handle" and acts[2][0] == 0.0 and acts[3][0] == pytest.approx(0.1)
    sw = [e for e in rt.events if e.kind == "switch"]
    assert sw[0].step == 4 and "start: selector oracle diagnosed missed_handle (2x)" in sw[0].detail["reason"]
    assert "base -> missed_handle" in caplog.text
    sel.set_label(None)
    rt.step(_obs(0.01))
    assert rt.mode == "missed_handle"
    rt.step(_obs(0.025))  # 2.5 cm beyond the recovery's start: progress resumed, back to base
    assert rt.mode is None and rt.events[-1].detail["reason"] == "progress resumed"
    for p in np.linspace(0.03, 0.16, 20):
        a = rt.step(_obs(p))
    assert a[0] == 0.0 and rt.mode is None and len([e for e in rt.events if e.kind == "switch"]) == 2
    # Disabled runtime: base alone, never diagnoses.
    off = RecoveryRuntime(m, StubBase(), {"missed_handle": StubPolicy([])}, sel, enabled=False, clock=lambda: 0.0)
    sel.set_label("missed_handle")
    assert all(off.step(_obs()).sum() == 0 for _ in range(30)) and not off.events


def test_start_diagnosis_switches_at_once_while_later_triggers_still_need_confirmation(fake_export):
    """The episode's first diagnosis (a state handed over at rest) switches on one selector call by default; a
    stall-triggered one mid-episode still needs `confirm_checks` agreeing calls."""
    m = load_manifest(fake_export)
    res = np.array([0.1, 0, 0, 0, 0, 0, 0])
    rt, sel = _runtime(m, {"missed_handle": StubPolicy([res] * 100)}, confirm_checks=2, confirm_every=3)
    assert rt.step(_obs(0.0))[0] == pytest.approx(0.1) and rt.mode == "missed_handle"
    assert rt.events[-1].detail["reason"] == "start: selector oracle diagnosed missed_handle"
    sel.set_label(None)
    rt2, sel2 = _runtime(m, {"missed_handle": StubPolicy([res] * 100)}, confirm_checks=2, confirm_every=3,
                         stall_steps=5, check_every=0, label=None)
    for _ in range(5):
        rt2.step(_obs(0.0))
    sel2.set_label("missed_handle")
    rt2.step(_obs(0.0))  # step 6: 5 steps without progress, the stall trigger's first diagnosis only
    assert rt2.mode is None and rt2.events[-1].detail["trigger"] == "stall"
    for _ in range(3):
        rt2.step(_obs(0.0))  # step 9: the confirming call agrees
    sw = [e for e in rt2.events if e.kind == "switch"]
    assert (rt2.mode == "missed_handle" and sw[0].step == 9
            and "stall: selector oracle diagnosed missed_handle (2x)" in sw[0].detail["reason"])


def test_stalled_recovery_without_a_failure_hands_back_or_keeps_driving(fake_export):
    """`stall_without_failure`: a recovery whose progress stalls while the selector sees no failure goes back to the
    base ("base") or keeps its policy ("keep", default); a different diagnosed mode switches either way."""
    assert MonitorConfig().stall_without_failure == "keep"
    m = load_manifest(fake_export)
    res = np.array([0.1, 0, 0, 0, 0, 0, 0])
    for rule in ("base", "keep"):
        rt, sel = _runtime(m, {"missed_handle": StubPolicy([res] * 100), "slipped_off": StubPolicy([res] * 100)},
                           recovery_stall_steps=5, check_every=0, stall_without_failure=rule)
        rt.step(_obs())
        assert rt.mode == "missed_handle"
        sel.set_label(None)
        for _ in range(5):
            a = rt.step(_obs())  # no progress for 5 recovery steps: the stall check asks the selector
        stalled = [e for e in rt.events if e.kind == "diagnosis" and e.detail.get("trigger") == "recovery stalled"]
        assert stalled, "the stall check must have asked the selector"
        if rule == "base":
            assert rt.mode is None and a[0] == 0.0
        else:
            assert rt.mode == "missed_handle" and a[0] == pytest.approx(0.1)
            sel.set_label("slipped_off")
            for _ in range(5):
                rt.step(_obs())
            assert rt.mode == "slipped_off"


def test_a_policy_s_manifest_stall_window_replaces_the_monitor_s(fake_export):
    """A recovery policy's `recovery_stall_steps` (experiments.export) decides when its stalled recovery is
    re-diagnosed; a policy without one uses the monitor's; `policy_stall_steps=False` (evaluate's explicit
    --recovery-stall-steps, the policy-alone arm) ignores the manifest."""
    m = load_manifest(fake_export)
    m = m.model_copy(update={"recovery_policies": [p.model_copy(update={"recovery_stall_steps": 8}) if p.name == "missed_handle"
                                                   else p for p in m.recovery_policies]})
    library = PolicyLibrary(fake_export, m)  # the real ONNX policies, under the edited manifest entries

    def steps_until_handed_back(mode: str, **monitor) -> int:
        rt, sel = _runtime(m, library, label=mode, recovery_stall_steps=5, check_every=0, stall_steps=1000,
                           stall_without_failure="base", **monitor)
        rt.step(_obs())
        assert rt.mode == mode
        sel.set_label(None)
        for k in range(1, 30):
            rt.step(_obs())  # progress never moves
            if rt.mode is None:
                return k
        raise AssertionError("the stalled recovery was never re-diagnosed")

    assert steps_until_handed_back("missed_handle") == 8  # its own window
    assert steps_until_handed_back("slipped_off") == 5  # policy "conditioned" has no window: the monitor's
    assert steps_until_handed_back("missed_handle", policy_stall_steps=False) == 5
    from recovla_jax.evaluation.sim2sim import _stall_text  # sim2sim.md names each policy's window where they differ

    assert (_stall_text({"stall_windows": {"missed_handle": 8, "conditioned": 50}})
            == "8 steps (missed_handle), 50 steps (conditioned)")
    assert _stall_text({"stall_windows": {"missed_handle": 100, "conditioned": 100}}) == "100 steps"


def test_hand_back_policy_is_released_as_soon_as_the_selector_sees_no_failure(fake_export):
    """A policy exported from a `train --hand-back` run drives only while the selector names a failure (as in
    MJX training); a policy without the flag keeps control until success, progress or a stall."""
    m = load_manifest(fake_export)
    res = np.array([0.1, 0, 0, 0, 0, 0, 0])
    for hand_back in (True, False):
        policy = StubPolicy([res] * 100)
        policy.entry = SimpleNamespace(name="stub", hand_back=hand_back)
        rt, sel = _runtime(m, {"missed_handle": policy}, confirm_checks=1)
        assert rt.step(_obs())[0] == pytest.approx(0.1) and rt.mode == "missed_handle"  # start check: recovery at once
        assert rt.step(_obs())[0] == pytest.approx(0.1)  # the failure persists: the residual keeps driving
        sel.set_label(None)
        a = rt.step(_obs())
        if hand_back:
            assert rt.mode is None and a[0] == 0.0
            assert "sees no failure" in rt.events[-1].detail["reason"]
            sel.set_label("missed_handle")  # the base-mode triggers re-engage it: the periodic check at step 20
            acts = [rt.step(_obs())[0] for _ in range(17)]  # steps 4..20 (no progress since step 1)
            assert rt.mode == "missed_handle" and acts[-1] == pytest.approx(0.1) and not any(acts[:-1])
        else:
            assert rt.mode == "missed_handle" and a[0] == pytest.approx(0.1)
    # hand_back_delay: the policy keeps control while the selector has seen no failure for up to `delay` steps
    policy = StubPolicy([res] * 100)
    policy.entry = SimpleNamespace(name="stub", hand_back=True, hand_back_delay=3)
    rt, sel = _runtime(m, {"missed_handle": policy}, confirm_checks=1)
    rt.step(_obs())
    sel.set_label(None)
    acts = [rt.step(_obs())[0] for _ in range(5)]
    assert acts == [pytest.approx(0.1)] * 3 + [0.0, 0.0] and rt.mode is None


def test_monitor_triggers():
    mon = FailureMonitor(MonitorConfig(stall_steps=5, check_every=4, timeout_steps=12), success_threshold=0.15)
    got = []
    for t in range(14):
        mon.update(0.01 * t if t < 3 else 0.02)
        got.append(mon.diagnosis_trigger())
    assert got[0] == "start" and got[7] == "stall" and got[11] == "timeout"
    assert got[3] is None  # periodic check skipped while progress moved in the last 4 steps
    mon.update(0.2)
    assert mon.succeeded and mon.diagnosis_trigger() is None


@pytest.mark.parametrize("measured_from, stalls", [("recovery", False), ("episode", True)])
def test_a_recovery_that_regains_lost_progress_is_not_a_stall(measured_from: str, stalls: bool):
    """A stack holds 0.5 of its progress, topples to 0, and the recovery re-places the block (0 -> 0.45): progress
    all along, though never above the episode's best. Only the former rule ("episode") calls that a stall."""
    mon = FailureMonitor(MonitorConfig(recovery_progress_from=measured_from), success_threshold=1.0)
    for _ in range(5):
        mon.update(0.5)
    mon.update(0.0)  # the failure
    mon.begin_recovery(policy_stall_steps=20)
    status = [None]
    for k in range(1, 31):
        mon.update(0.015 * k)
        status.append(mon.recovery_status())
    assert ("recovery stalled" in status) is stalls
    if stalls:
        assert status.index("recovery stalled") == 20  # a full window without beating 0.5


# ---------------------------------------------------------------------------------------------- openpi
def test_openpi_client_roundtrip_with_local_server(fake_export):
    from recovla_jax.runtime.onnx_policy import OnnxBasePolicy
    from recovla_jax.runtime.robots.openpi import OpenPIBasePolicy, OpenPIClient, serve_policy

    seen = []

    def infer(obs: dict) -> dict:
        seen.append(obs)
        if obs.get("prompt") == "fail":
            raise ValueError("model exploded")
        s = obs["observation/state"]
        return {"actions": np.stack([s[:7] + i for i in range(4)]).astype(np.float32), "step": np.int64(len(seen))}

    server, thread = serve_policy(infer, metadata={"policy": "stub", "action_horizon": 4})
    try:
        port = server.socket.getsockname()[1]
        client = OpenPIClient("127.0.0.1", port)
        assert client.metadata == {"policy": "stub", "action_horizon": 4}
        base = OpenPIBasePolicy(client, prompt="open the drawer", replan_every=2)
        state = np.arange(24, dtype=np.float32) / 10
        acts = [base.act(Observation(state, 0.0)) for _ in range(3)]
        np.testing.assert_allclose(acts[0], state[:7]) and np.testing.assert_allclose(acts[1], state[:7] + 1)
        np.testing.assert_allclose(acts[2], state[:7])  # replanned after 2 steps
        assert len(seen) == 2 and seen[0]["prompt"] == "open the drawer"
        assert seen[0]["observation/state"].dtype == np.float32 and seen[0]["observation/state"].shape == (24,)
        reply = client.infer({"observation/state": state, "prompt": ""})
        assert reply["actions"].shape == (4, 7) and reply["step"] == 3 and isinstance(reply["step"], np.int64)
        bad = OpenPIClient("127.0.0.1", port)
        with pytest.raises(RuntimeError, match="model exploded"):
            bad.infer({"prompt": "fail"})
        client.close()
    finally:
        server.shutdown()
        thread.join(5)
    # The ONNX base served through the protocol gives the same actions as in process.
    m = load_manifest(fake_export)
    onnx_base = OnnxBasePolicy(fake_export, m.base_policy)
    server, thread = serve_policy(lambda o: {"actions": onnx_base.act(o["observation/state"])[None].astype(np.float32)})
    try:
        client = OpenPIClient("127.0.0.1", server.socket.getsockname()[1])
        x = np.random.default_rng(1).normal(size=24).astype(np.float32)
        np.testing.assert_allclose(OpenPIBasePolicy(client).act(Observation(x, 0.0)), onnx_base.act(x), atol=1e-7)
        client.close()
    finally:
        server.shutdown()
        thread.join(5)


# ---------------------------------------------------------------------------------------------- native == MJX
@pytest.fixture(scope="module")
def mjx_side(drawer_task):
    """Jitted JAX task functions on given states: forward -> (observation, label, stage, ctrl of each action)."""
    import jax
    import jax.numpy as jnp
    from mujoco import mjx

    from recovla_jax.sim import gripper as grip

    task = drawer_task
    model = mjx.put_model(task.mj_model)

    @jax.jit
    def fn(qpos, qvel, ctrl, actions):
        d = mjx.forward(model, task.data_template.replace(qpos=qpos, qvel=qvel, ctrl=ctrl))
        label, stage = task.label(task.privileged(model, d))
        ctrls = jax.vmap(lambda a: grip.action_to_ctrl(task.gripper, task.limits, qpos, a))(actions)
        return task.observe(model, d), label, stage, ctrls

    return lambda s, actions: jax.device_get(fn(*(jnp.asarray(s[k], jnp.float32) for k in ("qpos", "qvel", "ctrl")),
                                                jnp.asarray(actions, jnp.float32)))


def _failure_like(robot, rng, variant: int) -> dict:
    """A native state, then pushed into each failure label's region (closed beside, slipped, twisted)."""
    robot.reset()
    for _ in range(int(rng.integers(0, 10))):
        robot.apply_action(rng.uniform(-1, 1, 7))
    d, sc = robot.data, robot.scene
    qpos = d.qpos.copy()
    if variant == 1:
        qpos[sc.grip.finger_qpos] = 0.0
    elif variant == 2:
        qpos[sc.drawer_qpos] = 0.08
    elif variant == 3:
        qpos[sc.grip.arm_qpos[3]] += 1.0
    return {"qpos": qpos, "qvel": d.qvel.copy(), "ctrl": d.ctrl.copy()}


def test_native_observation_ctrl_and_label_match_mjx_task(drawer_task, mjx_side):
    from recovla_jax.runtime import drawer_rules
    from recovla_jax.runtime.gripper import action_to_ctrl
    from recovla_jax.runtime.robots.mujoco_drawer import NativeDrawerRobot, NativeDynamics

    task = drawer_task
    rng = np.random.default_rng(0)
    robot = NativeDrawerRobot(NativeDynamics.nominal(), seed=0)
    labels = []
    for i in range(12):
        s = _failure_like(robot, rng, i % 4)
        robot.reset(s)
        actions = rng.uniform(-1.5, 1.5, (6, 7))
        actions[0] = 0.0
        obs, label, stage, ctrls = mjx_side(s, actions)
        native = robot.true_state()
        np.testing.assert_allclose(native, obs, atol=1e-5)
        # One set of rules: the runtime's label, the JAX labeller and the diagnosis hook agree.
        assert drawer_rules.label(native, 0.15) == (int(label), int(stage))
        rules = drawer_rules.classify(native)
        assert task.rules_classify(native) == (rules.closest_mode, rules.stage, rules.reason)
        if label >= 0:
            assert rules.closest_mode == task.failure_modes[int(label)]
        labels.append(int(label))
        for a, c in zip(actions, ctrls):
            np.testing.assert_allclose(action_to_ctrl(robot.scene.grip, s["qpos"], a), c, atol=1e-5)
    assert {0, 1, 2} <= set(labels), labels  # every failure label was exercised


def _check_nominal_start(scene, ranges, qpos, qvel, ctrl, obs) -> np.ndarray:
    """Assert one nominal start follows DrawerTask.reset's recipe under `ranges`; return its draws scaled to [-1, 1]."""
    from recovla_jax.runtime import rotations
    from recovla_jax.runtime.drawer_rules import OBS
    from recovla_jax.runtime.gripper import FINGER_OPEN, hold_ctrl

    r, tol = ranges, 1e-5
    off, yaw = qpos[scene.cabinet_qpos[:3]], qpos[scene.cabinet_qpos[3]]
    cab_rot = rotations.euler_zyx_to_mat(yaw, 0.0, 0.0)
    # handle = cabinet pose (joints) applied to the handle's offset; the pull axis is the cabinet's x
    np.testing.assert_allclose(obs[OBS["handle_pos"]], scene.cabinet_home + off + cab_rot @ scene.handle_offset, atol=tol)
    np.testing.assert_allclose(obs[OBS["drawer_axis"]], cab_rot[:, 0], atol=tol)
    local = cab_rot.T @ (obs[OBS["tcp_pos"]] - obs[OBS["handle_pos"]])  # TCP relative to the handle, cabinet frame
    g_yaw, pitch, roll = qpos[scene.grip.arm_qpos[3:]]
    np.testing.assert_allclose(qpos[scene.grip.finger_qpos], FINGER_OPEN, atol=tol)
    assert abs(qpos[scene.drawer_qpos]) < tol and np.all(qvel == 0) and abs(obs[OBS["drawer_opening"]][0]) < tol
    np.testing.assert_allclose(ctrl, hold_ctrl(scene.grip, qpos, -1.0), atol=tol)  # holds the pose, jaws open
    lo, hi = r.gripper_distance
    draws = np.array([off[0] / r.cabinet_xy_range, off[1] / r.cabinet_xy_range, off[2] / r.cabinet_z_range,
                      yaw / r.cabinet_yaw_range, 2 * (local[0] - lo) / (hi - lo) - 1, local[1] / r.gripper_lateral_range,
                      local[2] / r.gripper_lateral_range, (g_yaw - yaw) / r.gripper_yaw_range, pitch / r.gripper_tilt_range,
                      roll / r.gripper_tilt_range])
    assert np.all(np.abs(draws) <= 1 + 1e-3), draws
    return draws


def test_native_nominal_reset_matches_task_reset(drawer_task, mjx_side):
    """NumPy nominal starts follow DrawerTask.reset: same recipe, ranges from the task config, same support;
    their native observation equals task.observe on the same state."""
    import jax
    from mujoco import mjx

    from recovla_jax.runtime.drawer import DrawerNominalRanges
    from recovla_jax.runtime.robots.mujoco_drawer import NativeDrawerRobot, NativeDynamics
    from recovla_jax.tasks.drawer import DrawerConfig

    task, n = drawer_task, 48
    assert DrawerNominalRanges.from_task_config(DrawerConfig().model_dump()) == DrawerNominalRanges()
    model = mjx.put_model(task.mj_model)
    reset = jax.jit(jax.vmap(lambda k: (lambda d: (d.qpos, d.qvel, d.ctrl, task.observe(model, d)))(task.reset(model, k))))
    robot = NativeDrawerRobot(NativeDynamics.nominal(), seed=0)
    sc = robot.scene
    out = [np.asarray(x, np.float64) for x in jax.device_get(reset(jax.random.split(jax.random.PRNGKey(0), n)))]
    jax_draws = np.array([_check_nominal_start(sc, robot.ranges, *(x[i] for x in out)) for i in range(n)])
    custom = DrawerConfig(cabinet_xy_range=0.1, cabinet_z_range=0.02, cabinet_yaw_range=0.6, gripper_distance=(0.1, 0.3),
                          gripper_lateral_range=0.05, gripper_yaw_range=0.2, gripper_tilt_range=0.3).model_dump()
    for cfg in ({}, custom):
        robot = NativeDrawerRobot(NativeDynamics.nominal(), seed=1, task_config=cfg)
        draws = []
        for i in range(n):
            s = sc.nominal_state(robot.rng, robot.ranges)
            assert set(s) == {"qpos", "qvel", "ctrl"}
            robot.reset(s)
            native = robot.true_state()
            draws.append(_check_nominal_start(sc, robot.ranges, s["qpos"], s["qvel"], s["ctrl"], native))
            if i < 4:
                np.testing.assert_allclose(native, mjx_side(s, np.zeros((1, 7)))[0], atol=1e-5)
        draws = np.array(draws)
        if not cfg:  # NumPy and JAX starts span the same box (each draw is uniform over [-1, 1] scaled)
            for d in (draws, jax_draws):
                assert np.all(d.min(0) < -0.7) and np.all(d.max(0) > 0.7), (d.min(0), d.max(0))
    assert np.abs(draws[:, 3]).max() > 0.3 / 0.6  # custom yaw range used (beyond the default 0.3 rad)


def test_bank_rows_start_the_native_robot_and_other_scenes_are_refused(fake_run):
    from recovla_jax.failures.bank import FailureBank
    from recovla_jax.runtime.drawer import DrawerScene
    from recovla_jax.runtime.robots.mujoco_drawer import SCENE, NativeDrawerRobot, NativeDynamics

    bank = FailureBank.load(fake_run / "bank")
    assert bank.arrays["mocap_pos"].shape[1:] == (0, 3)  # the scene has no mocap bodies
    robot = NativeDrawerRobot(NativeDynamics.nominal())
    for i in range(3):
        row = {k: bank.arrays[k][i] for k in ("qpos", "qvel", "mocap_pos", "mocap_quat", "ctrl")}
        obs = robot.reset(row)
        np.testing.assert_allclose(obs.state, bank.arrays["obs"][i], atol=1e-6)
    row["qpos"] = row["qpos"][:-4]  # the old scene's size (no cabinet joints)
    with pytest.raises(ValueError, match=r"start state has 9 qpos .* another version of the scene"):
        robot.reset(row)
    import mujoco

    xml = SCENE.read_text().replace('<body name="cabinet" pos="0 0 0.3" gravcomp="1">',
                                    '<body name="cabinet" mocap="true" pos="0 0 0.3">')
    xml = "\n".join(line for line in xml.splitlines() if 'name="cab_' not in line or "geom" in line)
    old = mujoco.MjModel.from_xml_string(xml)
    assert old.nmocap == 1
    with pytest.raises(ValueError, match=r"no cabinet joints .* re-train"):
        DrawerScene(old)


def test_numpy_twins_match_jax():
    """runtime.rotations == sim.rotations on random inputs; the rules' observation slices == the task's layout."""
    import jax.numpy as jnp

    from recovla_jax.runtime import drawer_rules
    from recovla_jax.runtime import rotations as np_rot
    from recovla_jax.sim import rotations as jax_rot
    from recovla_jax.tasks.drawer import DrawerTask

    rng = np.random.default_rng(0)
    for _ in range(50):
        e = rng.uniform([-3, -1.5, -3], [3, 1.5, 3])
        m = np_rot.euler_zyx_to_mat(*e)
        np.testing.assert_allclose(m, jax_rot.euler_zyx_to_mat(*jnp.asarray(e, jnp.float32)), atol=1e-6)
        np.testing.assert_allclose(np_rot.mat_to_euler_zyx(m), jax_rot.mat_to_euler_zyx(jnp.asarray(m, jnp.float32)), atol=2e-5)
        v = rng.normal(size=3) * rng.choice([1e-7, 0.1, 1.0])
        r = np_rot.axis_angle_to_mat(v)
        np.testing.assert_allclose(r, jax_rot.axis_angle_to_mat(jnp.asarray(v, jnp.float32)), atol=1e-6)
        np.testing.assert_allclose(np_rot.mat_to_axis_angle(r), jax_rot.mat_to_axis_angle(jnp.asarray(r, jnp.float32)), atol=2e-5)
    assert drawer_rules.FAILURE_MODES == DrawerTask.failure_modes and drawer_rules.RECOVERY_STAGES == DrawerTask.recovery_stages
    layout = {f.name: f.size for f in DrawerTask.obs_fields}
    assert {k: s.stop - s.start for k, s in drawer_rules.OBS.items()} == layout and sum(layout.values()) == drawer_rules.OBS_SIZE
    start = 0
    for f in DrawerTask.obs_fields:
        assert drawer_rules.OBS[f.name].start == start
        start += f.size


def test_evaluate_recovery_stall_steps_option():
    """By default the manifest's per-policy windows apply (else the runtime's 50); an explicit value overrides every
    policy's; 0, negatives and non-integers are refused."""
    from experiments.evaluate import build_parser, monitor_config
    from recovla_jax.runtime.monitor import MonitorConfig

    default = monitor_config(build_parser().parse_args(["--run=r"]))
    assert default.recovery_stall_steps == MonitorConfig().recovery_stall_steps and default.policy_stall_steps
    given = monitor_config(build_parser().parse_args(["--run=r", "--recovery-stall-steps=100"]))
    assert given.recovery_stall_steps == 100 and not given.policy_stall_steps
    for bad in ("0", "-5", "2.5", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--run=r", f"--recovery-stall-steps={bad}"])


def test_evaluate_refuses_counts_and_ranges_that_would_silently_run_something_else(capsys):
    """--episodes-per-mode=-1 used to drop the last state (idx[:-1]), --max-steps=0 meant the default length and
    --latency=2 died unpacking; each is now refused naming what is valid."""
    from experiments.evaluate import build_parser

    parse = build_parser().parse_args
    args = parse(["--run=r", "--latency=0,2", "--nominal-episodes=0", "--episodes-per-mode=5", "--max-steps=80"])
    assert args.latency == (0, 2) and args.nominal_episodes == 0 and args.episodes_per_mode == 5
    for bad, valid in (("--episodes-per-mode=-1", ">= 1"), ("--max-steps=0", ">= 1"), ("--nominal-episodes=-2", ">= 0"),
                       ("--latency=2", "lo,hi"), ("--latency=2,1", "lo <= hi"), ("--latency=a,b", "lo,hi"),
                       ("--obs-noise=-0.1", ">= 0")):
        with pytest.raises(SystemExit):
            parse(["--run=r", bad])
        assert valid in capsys.readouterr().err, bad


def test_evaluate_on_train_states(fake_run, fake_export, tmp_path):
    """--states=train starts only the bank's train rows, writes RUN/sim2sim-train without an MJX comparison (MJX's
    numbers are held-out), labels the report TRAIN, and the results table refuses it as a sim2sim column."""
    import shutil

    from experiments.evaluate import main
    from experiments.report import build_report
    from recovla_jax.evaluation.sim2sim import Sim2SimConfig

    run = tmp_path / "run"
    shutil.copytree(fake_run, run, ignore=shutil.ignore_patterns("export", "sim2sim*"))
    res = main([f"--run={run}", f"--export-dir={fake_export}", "--states=train", "--episodes-per-mode=1",
                "--nominal-episodes=0", "--max-steps=6"])
    out = run / "sim2sim-train"
    assert res["states"] == "train" and res["config"]["states"] == "train" and not (run / "sim2sim").exists()
    with np.load(run / "bank" / "bank.npz") as z:
        split, mode = z["split"], z["mode"]
    modes = json.loads((run / "bank" / "bank.json").read_text())["modes"]
    episodes = [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]
    assert episodes and all(split[e["state"]] == 0 for e in episodes if e["state"] is not None)
    for m, e in res["modes"].items():
        assert e["train_states"] == int(np.sum((split == 0) & (mode == modes.index(m)))) > 0
        assert "heldout_states" not in e and e["mjx"]["recovla"] is None and e["gap"]["policy_minus_mjx_recovla"] is None
    assert "**TRAIN failure states**" in (out / "sim2sim.md").read_text()
    out.rename(run / "sim2sim")  # even placed where the report looks, train states never fill the sim2sim column
    rep = build_report([run], tmp_path / "report", plot=False)
    assert all(r["cells"]["sim2sim"] is None for r in rep["rows"] if r["kind"] == "mode")
    assert any("train states, not held-out ones" in n for n in rep["notes"])
    with pytest.raises(ValueError, match="valid are"):
        Sim2SimConfig(states="test")


def test_evaluate_refuses_a_residual_cap_that_is_not_positive():
    from experiments.evaluate import build_parser

    assert build_parser().parse_args(["--run=r", "--max-residual-norm=1e-6"]).max_residual_norm == 1e-6
    for bad in ("0", "-1", "inf", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args(["--run=r", f"--max-residual-norm={bad}"])


def test_choose_windows_per_policy():
    """Each policy takes the window with the most successes over its own modes; a tie keeps the runtime default if it
    is among the best, else the shortest."""
    from experiments.tune_runtime import choose_windows

    successes = {50: {"a": 10, "b": 5, "c": 7}, 100: {"a": 12, "b": 5, "c": 3}, 150: {"a": 12, "b": 4, "c": 9}}
    policies = {"pa": ["a"], "pb": ["b"], "pbc": ["b", "c"]}
    assert choose_windows(successes, policies, default=50) == {"pa": 100, "pb": 50, "pbc": 150}
    assert choose_windows({25: {"a": 1}, 75: {"a": 1}}, {"pa": ["a"]}, default=50) == {"pa": 25}


def test_tune_runtime_starts_train_states_only_and_writes_the_manifest(fake_run, fake_export, tmp_path):
    """The tuner sweeps windows on the bank's train rows, runs the chosen combination again, and writes each policy's
    window into the manifest (recorded under source.runtime_tuning), which the runtime then reads."""
    import shutil

    from experiments.tune_runtime import main
    from recovla_jax.runtime.manifest import with_stall_windows

    run, export = tmp_path / "run", tmp_path / "export"
    shutil.copytree(fake_run, run, ignore=shutil.ignore_patterns("export", "sim2sim*"))
    shutil.copytree(fake_export, export)
    res = main([f"--run={run}", f"--export-dir={export}", "--windows", "20", "5", "--episodes-per-mode=50"])
    with np.load(run / "bank" / "bank.npz") as z:
        split, mode = z["split"], z["mode"]
    modes = json.loads((run / "bank" / "bank.json").read_text())["modes"]
    assert res["windows"] == [5, 20] and res["states"] == "train"
    for m in res["modes"]:  # every train state of the mode, no held-out one
        n_train = int(np.sum((split == 0) & (mode == modes.index(m))))
        assert all(res["sweep"][w][m]["trials"] == n_train for w in ("5", "20")) and res["chosen_result"][m]["trials"] == n_train
    m = load_manifest(export)  # the sha256 of every model still matches: only the manifest changed
    assert {p.name: p.recovery_stall_steps for p in m.recovery_policies} == res["chosen"]
    assert set(res["chosen"].values()) <= {5, 20} and m.source["runtime_tuning"]["states"] == "train"
    assert "chosen, run again" in (run / "runtime_tuning" / "tuning.md").read_text()
    assert all(p.recovery_stall_steps is None for p in load_manifest(fake_export).recovery_policies)  # untouched
    with pytest.raises(ValueError, match="unknown recovery policies"):
        with_stall_windows(m, {"nope": 5}, {})
