"""ONNX export: verified models, manifest, refusal of corrupted models, any checkpoint step."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from pydantic import ValidationError

from recovla_jax.export.onnx_io import ParityError, run_onnx
from recovla_jax.export.run_reader import RunDirError
from recovla_jax.runtime.manifest import ExportManifest, ManifestError, load_manifest


def test_export_writes_verified_models_and_manifest(fake_run, fake_export):
    m = load_manifest(fake_export)  # validates and checks every sha256
    assert m.task == "drawer" and m.observation.size == 24 and m.residual_observation.size == 43
    assert m.control.rate_hz == pytest.approx(50.0) and m.control.sim_substeps == 4
    assert [p.name for p in m.recovery_policies] == ["conditioned", "missed_handle"]
    for entry in [m.base_policy, *m.recovery_policies]:
        assert entry.parity.passed and entry.parity.counts["random"] >= 1000 and entry.parity.counts["bank"] >= 1000
        for key, err in entry.parity.max_abs_error.items():  # within 1e-5 x the set's largest input scale
            assert err <= 1e-5 * entry.parity.max_input_scale[key.split("/")[0]]
        assert entry.parity.max_input_scale["random"] <= 10  # the cap
    for entry in m.recovery_policies:  # float32 rounding measured against the float64 formula: tiny for small weights
        assert set(entry.parity.float32_rounding) == set(entry.parity.max_abs_error)
        assert all(0.0 <= r < 1e-5 for r in entry.parity.float32_rounding.values())
    cond = next(p for p in m.recovery_policies if p.name == "conditioned")
    assert cond.modes == ["slipped_off", "misaligned_gripper"] and cond.checkpoint_step == 10  # latest by default
    assert cond.descriptor_features["slipped_off"][:3] == [0.0, 1.0, 0.0]
    assert cond.descriptor_features["misaligned_gripper"][:3] == [0.0, 0.0, 1.0]
    # The two outputs agree with each other: action = clip(base slice + residual).
    x = np.random.default_rng(0).normal(size=(64, 43)).astype(np.float32)
    out = run_onnx((fake_export / cond.file).read_bytes(), x)
    np.testing.assert_allclose(out["action"], np.clip(x[:, 24:31] + out["residual"], -1, 1), atol=1e-6)
    assert np.all(np.abs(out["residual"]) <= cond.alpha + 1e-6)


def test_export_cli_older_step_single_policy(fake_run, fake_export, tmp_path):
    from experiments.export import main

    m = main([f"--run={fake_run}", "--policy=missed_handle", "--step=5", f"--out={tmp_path}",
              "--recovery-stall-steps=missed_handle=80"])
    assert [p.name for p in m.recovery_policies] == ["missed_handle"] and m.recovery_policies[0].checkpoint_step == 5
    assert load_manifest(tmp_path).recovery_policies[0].recovery_stall_steps == 80  # the runtime's window, on disk
    latest = load_manifest(fake_export)
    assert all(p.recovery_stall_steps is None for p in latest.recovery_policies)  # none given: the runtime's default
    assert m.recovery_policies[0].sha256 != next(p for p in latest.recovery_policies if p.name == "missed_handle").sha256
    with pytest.raises(SystemExit):
        main([f"--run={fake_run}", "--step=7", f"--out={tmp_path / 'x'}"])
    with pytest.raises(RunDirError, match=r"available steps: \[5, 10\]"):
        from recovla_jax.export.exporter import export_run

        export_run(fake_run, tmp_path / "y", step=7, log=lambda *_: None)
    assert not (tmp_path / "y").exists()  # failed before writing anything


def test_a_re_export_keeps_the_stall_windows_chosen_for_the_earlier_export(fake_run, tmp_path):
    """`experiments.tune_runtime` writes each policy's window into the manifest; exporting again (after more training,
    or to set one window by hand) must not silently reset the others to the runtime's default."""
    from experiments.export import main
    from recovla_jax.runtime.manifest import save_manifest, with_stall_windows

    out = tmp_path / "export"
    first = main([f"--run={fake_run}", f"--out={out}"])
    assert all(p.recovery_stall_steps is None for p in first.recovery_policies)
    tuned = with_stall_windows(first, {"missed_handle": 100, "conditioned": 150}, {"states": "train", "arm": "runtime"})
    save_manifest(tuned, out)
    again = main([f"--run={fake_run}", f"--out={out}", "--recovery-stall-steps=conditioned=30"])
    windows = {p.name: p.recovery_stall_steps for p in again.recovery_policies}
    assert windows == {"missed_handle": 100, "conditioned": 30}  # kept, and the one set by hand
    assert again.source["runtime_tuning"]["kept_for"] == ["missed_handle"]
    assert again.source["runtime_tuning"]["states"] == "train"
    assert {p.name: p.recovery_stall_steps for p in load_manifest(out).recovery_policies} == windows


def test_export_stall_windows_are_checked_before_anything_is_written(fake_run, fake_export, tmp_path):
    """`--recovery-stall-steps`: N for every policy, POLICY=N for one (it wins over N); an unknown policy or a window
    below 1 is refused with what is valid, before any file is written."""
    from experiments.export import main, parse_stall_steps
    from recovla_jax.export.exporter import policy_stall_windows

    assert parse_stall_steps(["100", "missed_handle=30"]) == {"*": 100, "missed_handle": 30}
    assert parse_stall_steps(None) == {}
    for bad in ("0", "-3", "x", "missed_handle=", "=5", "missed_handle=2.5"):
        with pytest.raises(SystemExit, match="expected N or POLICY=N"):
            parse_stall_steps([bad])
    pols = ["conditioned", "missed_handle"]
    assert policy_stall_windows({"*": 100, "missed_handle": 30}, pols) == {"conditioned": 100, "missed_handle": 30}
    assert policy_stall_windows({"missed_handle": 30}, pols) == {"missed_handle": 30}
    with pytest.raises(RunDirError, match=r"names policy \['nope'\].*policies: \['conditioned', 'missed_handle'\]"):
        policy_stall_windows({"nope": 5}, pols)
    with pytest.raises(RunDirError, match=">= 1"):
        policy_stall_windows({"*": 0}, pols)
    with pytest.raises(SystemExit):
        main([f"--run={fake_run}", f"--out={tmp_path / 'x'}", "--recovery-stall-steps=nope=5"])
    assert not (tmp_path / "x").exists()
    data = json.loads((fake_export / "manifest.json").read_text())
    data["recovery_policies"][0]["recovery_stall_steps"] = 0
    with pytest.raises(ValidationError, match="recovery_stall_steps"):  # the manifest itself refuses a window below 1
        ExportManifest.model_validate(data)


def _flip_first_weight(name: str, model: onnx.ModelProto, target: str) -> None:
    if name != target:
        return
    init = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight matrix
    arr = onnx.numpy_helper.to_array(init).copy()
    arr.flat[0] = -arr.flat[0] + 0.5
    init.CopyFrom(onnx.numpy_helper.from_array(arr, init.name))


def test_corrupted_model_is_refused(fake_run, tmp_path):
    from recovla_jax.export.exporter import export_run

    out = tmp_path / "export"
    with pytest.raises(ParityError, match=r"refusing to write recovery_missed_handle\.onnx: output '\w+' differs from JAX"):
        export_run(fake_run, out, policies=["missed_handle"], log=lambda *_: None,
                   tamper=lambda n, m: _flip_first_weight(n, m, "missed_handle"))
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, no staging folder left behind
    # over an earlier export, a failed one (here the base, verified first, passes) changes none of its files
    good = export_run(fake_run, out, policies=["missed_handle"], log=lambda *_: None)
    before = {f.name: f.read_bytes() for f in out.iterdir()}
    with pytest.raises(ParityError):
        export_run(fake_run, out, policies=["missed_handle"], step=5, log=lambda *_: None,
                   tamper=lambda n, m: _flip_first_weight(n, m, "missed_handle"))
    assert {f.name: f.read_bytes() for f in out.iterdir()} == before and list(tmp_path.iterdir()) == [out]
    assert load_manifest(out).recovery_policies[0].sha256 == good.recovery_policies[0].sha256  # still loadable


def test_parity_tolerance_grows_with_input_scale_only(tmp_path):
    """Rounding that grows with |input| passes under the scaled rule; the same error on small inputs does not."""
    from recovla_jax.export.exporter import normalised_magnitude
    from recovla_jax.export.onnx_io import to_onnx_model, write_verified

    model = to_onnx_model(lambda x: x * 2.0, 3, "x", ["y"], "double")
    big = np.array([[500.0, 0.0, 0.0], [0.0, -800.0, 1.0]], np.float32)
    rounding_like = lambda x: {"y": 2.0 * x + 3e-8 * np.abs(x).max(axis=1, keepdims=True)}  # noqa: E731  grows with |x|
    with pytest.raises(ParityError, match=r"allowed 1e-05: tolerance 1e-05 x input scale 1\b"):
        write_verified(model, tmp_path / "flat.onnx", rounding_like, {"big": big}, 1e-5)
    assert not (tmp_path / "flat.onnx").exists()
    scale = normalised_magnitude(np.zeros(3), np.ones(3))
    res = write_verified(model, tmp_path / "scaled.onnx", rounding_like, {"big": big}, 1e-5, scale)
    assert res["max_input_scale"] == {"big": 10.0} and (tmp_path / "scaled.onnx").exists()  # 800, capped at 10
    # An error beyond 10x the tolerance fails even on huge inputs.
    with pytest.raises(ParityError, match="tolerance 1e-05 x input scale 10"):
        write_verified(model, tmp_path / "far.onnx", lambda x: {"y": 2.0 * x + 2e-4}, {"big": big}, 1e-5, scale)
    # A zero tolerance accepts an exact match, and empty sets are fine.
    exact = lambda x: {"y": 2.0 * x}  # noqa: E731
    write_verified(model, tmp_path / "exact.onnx", exact, {"big": big[:1] * 0.25, "none": big[:0]}, 0.0, scale)
    with pytest.raises(ValueError, match="one value per row"):
        write_verified(model, tmp_path / "bad.onnx", exact, {"big": big}, 1e-5, lambda x: np.ones((len(x), 1)))
    # A constant error (a wrong graph) on ordinary inputs still fails under the scaled rule.
    small = np.full((4, 3), 0.5, np.float32)
    off = lambda x: {"y": 2.0 * x + 1e-3}  # noqa: E731
    with pytest.raises(ParityError, match="differs from JAX by 0.001"):
        write_verified(model, tmp_path / "wrong.onnx", off, {"small": small}, 1e-5, scale)
    # The network's own clip bounds the scale.
    assert normalised_magnitude(np.zeros(3), np.ones(3), clip=10.0)(big).tolist() == [10.0, 10.0]


def test_parity_allowance_adds_the_references_own_float32_rounding(tmp_path):
    """Large weights make float32 itself inexact at any input size: with a float64 evaluation of the formula the
    allowance adds twice the reference's measured error, and a float64 formula that disagrees is refused."""
    from recovla_jax.export.onnx_io import MAX_FLOAT32_ROUNDING, to_onnx_model, write_verified

    model = to_onnx_model(lambda x: x * 2.0, 3, "x", ["y"], "double")
    x = np.full((4, 3), 0.5, np.float32)
    reference = lambda x: {"y": 2.0 * x + 3e-5}  # noqa: E731  float32 reference 3e-5 from exact, ONNX 3e-5 from it
    exact = lambda x: {"y": 2.0 * np.asarray(x, np.float64)}  # noqa: E731
    with pytest.raises(ParityError, match=r"allowed 1e-05: tolerance 1e-05 x input scale 1\)"):
        write_verified(model, tmp_path / "flat.onnx", reference, {"s": x}, 1e-5)
    res = write_verified(model, tmp_path / "ok.onnx", reference, {"s": x}, 1e-5, exact=exact)
    assert res["float32_rounding"]["s/y"] == pytest.approx(3e-5, rel=1e-2) and (tmp_path / "ok.onnx").exists()
    # twice the rounding, not more: an ONNX error of 8e-5 against a 3e-5 rounding (allowed 7e-5) fails
    with pytest.raises(ParityError, match=r"\+ 2 x float32 rounding 3e-05\)"):
        write_verified(model, tmp_path / "far.onnx", lambda x: {"y": 2.0 * x + 8e-5}, {"s": x}, 1e-5,
                       exact=lambda x: {"y": 2.0 * np.asarray(x, np.float64) + 5e-5})
    assert not (tmp_path / "far.onnx").exists()
    # a float64 formula far from the reference is not rounding: refused instead of loosening the check
    with pytest.raises(ParityError, match="float64 evaluation.*over the 0.001 accepted as rounding"):
        write_verified(model, tmp_path / "wrong.onnx", reference, {"s": x}, 1e-5,
                       exact=lambda x: {"y": 2.0 * np.asarray(x, np.float64) + 2 * MAX_FLOAT32_ROUNDING})
    with pytest.raises(ParityError, match="float64 evaluation has no output 'y'"):
        write_verified(model, tmp_path / "none.onnx", reference, {"s": x}, 1e-5, exact=lambda x: {})


def test_float64_formula_matches_the_training_path(fake_run):
    """residual_float64_fn (the rounding allowance's yardstick) computes what the training code path computes."""
    from recovla_jax.export import functions
    from recovla_jax.export.run_reader import load_bundles, read_residual_checkpoint

    b = load_bundles(fake_run)["missed_handle"]
    ck = read_residual_checkpoint(fake_run / b["checkpoint_dir"])
    args = (ck.actor_params, ck.mean, ck.std, float(b["normalizer_max_abs"]), float(b["alpha"]), b["task_obs_size"])
    ref = functions.residual_reference_fn(*args, tuple(b["actor"]["hidden"]), b["action"]["size"])
    f64 = functions.residual_float64_fn(*args, b["action"]["size"], b["action"]["low"], b["action"]["high"],
                                        b["actor"]["activation"])
    x = np.random.default_rng(0).normal(size=(256, b["residual_obs_size"])).astype(np.float32)
    for name, want in ref(x).items():
        np.testing.assert_allclose(f64(x)[name], want, atol=1e-5)


def test_manifest_rejects_wrong_sizes_and_changed_files(fake_export, tmp_path):
    raw = json.loads((fake_export / "manifest.json").read_text())
    bad = json.loads(json.dumps(raw))
    bad["observation"]["size"] = 25
    with pytest.raises(ValidationError, match="observation fields cover 24 floats but the observation size is 25"):
        ExportManifest.model_validate(bad)
    bad = json.loads(json.dumps(raw))
    bad["recovery_policies"][0]["inputs"][0]["shape"] = ["batch", 42]
    with pytest.raises(ValidationError, match=r"input 'residual_obs' has shape \['batch', 42\], but the observation size is 43"):
        ExportManifest.model_validate(bad)
    bad = json.loads(json.dumps(raw))
    bad["recovery_policies"][0]["modes"] = ["fell_over"]
    with pytest.raises(ValidationError, match="unknown failure mode 'fell_over'"):
        ExportManifest.model_validate(bad)
    bad = json.loads(json.dumps(raw))
    bad["progress"]["field"] = "lid_angle"  # a field the observation lacks: a validation error naming the valid ones
    with pytest.raises(ValidationError, match=r"progress.field: no observation field 'lid_angle'; fields: \['tcp_pos'"):
        ExportManifest.model_validate(bad)
    # A model file changed after export is caught by its sha256.
    for f in fake_export.iterdir():
        (tmp_path / f.name).write_bytes(f.read_bytes())
    (tmp_path / "manifest.json").write_text(json.dumps(bad))  # ... and a bad manifest on disk is named by its path
    with pytest.raises(ManifestError, match=r"(?s)manifest.json: .*progress.field"):
        load_manifest(tmp_path)
    (tmp_path / "manifest.json").write_text(json.dumps(raw))
    (tmp_path / "base_policy.onnx").write_bytes((tmp_path / "base_policy.onnx").read_bytes() + b"\0")
    with pytest.raises(ManifestError, match="sha256 of base_policy.onnx"):
        load_manifest(tmp_path)


def test_run_from_another_scene_version_is_refused(fake_run, tmp_path):
    """A run whose bank states do not fit the current scene (e.g. made before the cabinet got joints) is refused."""
    import shutil

    from recovla_jax.export.exporter import export_run
    from recovla_jax.failures.bank import FailureBank

    run = tmp_path / "old-run"
    shutil.copytree(fake_run / "policies", run / "policies")
    bank = FailureBank.load(fake_run / "bank")
    arrays = dict(bank.arrays, qpos=bank.arrays["qpos"][:, :9],
                  mocap_pos=np.zeros((len(bank), 1, 3), np.float32), mocap_quat=np.zeros((len(bank), 1, 4), np.float32))
    FailureBank(bank.task, bank.modes, bank.stages, arrays, bank.meta).save(run / "bank")
    with pytest.raises(RunDirError, match=r"bank states have 9 qpos but the current scene .* has 13: .* re-train"):
        export_run(run, tmp_path / "export", log=lambda *_: None)
    assert not (tmp_path / "export").exists()


def test_load_run_base_rebuilds_the_runs_frozen_base(fake_run, tmp_path):
    """The base a run saved comes back with its own widths and acts exactly as training's copy did."""
    import jax.numpy as jnp

    from recovla_jax.export.run_reader import load_run_base, read_bank, read_base_params
    from recovla_jax.policies.base_policy import make_bc_apply
    from tests._fake_run import HIDDEN

    base = load_run_base(fake_run)
    params, _ = read_base_params(fake_run)
    obs = jnp.asarray(read_bank(fake_run).arrays["obs"])
    assert base.name == "fake-bc"
    np.testing.assert_array_equal(np.asarray(base(obs)), np.asarray(make_bc_apply(HIDDEN, 7)(params, obs)))
    with pytest.raises(RunDirError, match="base_policy"):
        load_run_base(tmp_path)


def test_run_policies_load_back_as_the_exported_residuals(fake_run, fake_export):
    """`load_run_policies` (later MJX evaluations of a finished run) gives every mode the residual its ONNX
    export computes: the latest checkpoint, the normalizer and alpha, through an independent path."""
    import jax.numpy as jnp

    from recovla_jax.evaluation.run_policies import load_run_policies
    from recovla_jax.export.run_reader import read_bank
    from recovla_jax.runtime.onnx_policy import PolicyLibrary
    from tests._fake_run import POLICIES, STEPS

    pol = load_run_policies(fake_run)
    assert set(pol.params_for_mode) == {m for ms in POLICIES.values() for m in ms}
    assert pol.checkpoint_steps == {name: STEPS[-1] for name in POLICIES}
    library = PolicyLibrary(fake_export, load_manifest(fake_export))
    obs = read_bank(fake_run).arrays["obs"][:4]
    rng = np.random.default_rng(0)
    for mode, params in pol.params_for_mode.items():
        for state in obs:
            base_action = rng.uniform(-1, 1, 7)
            x = library[mode].residual_obs(state, base_action, mode)
            ours = pol.alpha * np.tanh(np.asarray(pol.apply(params, jnp.asarray(x[None])))[0])
            np.testing.assert_allclose(ours, library[mode].residual(state, base_action, mode), atol=1e-5)


def test_path_eval_groups_path_states_by_step_and_refuses_runs_without_paths(fake_run, tmp_path):
    """experiments.path_eval on a copy of the fake run with an expert-path bank made of its own bank's states."""
    import shutil

    from experiments.path_eval import main
    from recovla_jax.failures.bank import FailureBank

    with pytest.raises(SystemExit, match="no expert_paths/bank.npz"):
        main([f"--run={fake_run}"])
    run = tmp_path / "run"
    shutil.copytree(fake_run, run)
    bank = FailureBank.load(run / "bank")
    n = len(bank)
    arrays = {**bank.arrays, "split": np.zeros(n, np.int32),
              "path_step": np.where(np.arange(n) % 3 == 0, 10, 20).astype(np.int32), "origin": np.arange(n)}
    FailureBank(bank.task, bank.modes, bank.stages, arrays, {"horizon": 30, "stride": 10}).save(run / "expert_paths")
    with pytest.raises(SystemExit, match="--mode: \\['nope'\\] has no trained policy"):
        main([f"--run={run}", "--mode=nope"])
    rec = main([f"--run={run}", "--mode=missed_handle", "--states=2"])
    cells = rec["modes"]["missed_handle"]
    in_mode = arrays["mode"] == bank.modes.index("missed_handle")
    expected = sorted(set(arrays["path_step"][in_mode].tolist()))
    assert [c["path_step"] for c in cells] == expected
    for c in cells:
        count = int(np.sum(in_mode & (arrays["path_step"] == c["path_step"])))
        assert c["residual"]["trials"] == c["base"]["trials"] == min(2, count)
        assert 0.0 <= c["residual"]["rate"] <= 1.0 and 0.0 <= c["base"]["rate"] <= 1.0
    assert (run / "path_eval.json").exists() and "not a held-out result" in rec["note"]
