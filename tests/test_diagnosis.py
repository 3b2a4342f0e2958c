"""VLM diagnosis: rendering, selectors (Gemini through the real google-genai client, rules, oracle, cache),
validation and fallback, bank diagnosis, accuracy report.

Fast by design: states are built with native MuJoCo (no MJX program except one small kinematics jit), and
Gemini is a local HTTP server on 127.0.0.1 speaking the generateContent REST shape.
"""

from __future__ import annotations

import base64
import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import mujoco
import numpy as np
import pytest

from recovla_jax.diagnosis.bank_diagnosis import descriptor_for_mode, descriptors_for_bank, diagnose_bank, majority_descriptor
from recovla_jax.diagnosis.descriptor import RecoveryDescriptor
from recovla_jax.diagnosis.gemini import MissingAPIKeyError
from recovla_jax.diagnosis.metrics import score
from recovla_jax.diagnosis.rules import RulesSelector
from recovla_jax.diagnosis.selectors import make_selector, resolve_auto
from recovla_jax.diagnosis.types import DiagnosisRecord, DiagnosisResult, FailureObservation, PrivilegedLabel
from recovla_jax.failures.bank import FailureBank
from recovla_jax.sim import native
from recovla_jax.sim.render import FrameRenderer, RenderBackendError

SECRET = "AIzaTEST-not-a-real-key-7f3a9c"
RULES_ACCURACY_FLOOR = 0.95  # measured: 1.000 mode and stage on the 405-state fixture bank and on this synthetic set


# ------------------------------------------------------------------------------------ labelled states
def _rz(yaw: float) -> np.ndarray:
    c, s = np.cos(yaw), np.sin(yaw)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _axis_angle(v: np.ndarray) -> np.ndarray:
    angle = np.linalg.norm(v)
    k = v / angle
    kx = np.array([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    return np.eye(3) + np.sin(angle) * kx + (1 - np.cos(angle)) * kx @ kx


def _euler_zyx(rot: np.ndarray) -> np.ndarray:
    return np.array([np.arctan2(rot[1, 0], rot[0, 0]), np.arcsin(np.clip(-rot[2, 0], -1, 1)), np.arctan2(rot[2, 1], rot[2, 2])])


def _make_state(task, mode: str, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A failure state of `mode` built the way the MJX injectors build them, with native MuJoCo only."""
    m = task.mj_model
    idx = task.gripper
    u = rng.uniform
    yaw = u(-0.3, 0.3)
    row = {"qpos": m.qpos0.copy(), "qvel": np.zeros(m.nv), "ctrl": np.zeros(m.nu)}
    row["qpos"][list(task.cabinet_qpos)] = np.r_[u(-0.06, 0.06, 2), u(-0.04, 0.04), yaw]
    row["qpos"][task.drawer_qpos] = u(0.05, 0.2) if mode == "slipped_off" else 0.0
    priv = native.privileged_state(task, row)
    handle, axis, cab_rot = priv["handle_pos"], priv["drawer_axis"], _rz(yaw)
    rot = _rz(yaw)
    sign = rng.choice([-1.0, 1.0])
    if mode == "missed_handle":
        lateral = (np.array([0, 1.0, 0]) if rng.random() < 0.5 else np.array([0, 0, 1.0])) * sign * u(0.025, 0.05)
        tcp, finger = handle + cab_rot @ (np.array([u(-0.005, 0.02), 0, 0]) + lateral), 0.0
    elif mode == "slipped_off":
        tcp, finger = handle + axis * u(0.02, 0.08) + cab_rot @ np.r_[0.0, u(-0.04, 0.04, 2)], 0.04
    else:
        direction = rng.normal(size=3)
        rot = _axis_angle(direction / np.linalg.norm(direction) * u(0.6, 1.2)) @ rot
        tcp, finger = handle + axis * u(0.03, 0.1) + u(-0.03, 0.03, 3), 0.04
    body = tcp - rot @ np.asarray(task.tcp_offset)
    row["qpos"][list(idx.arm_qpos)] = np.r_[body, _euler_zyx(rot)]
    row["qpos"][list(idx.finger_qpos)] = finger
    return row


@pytest.fixture(scope="module")
def labelled_bank(drawer_task) -> FailureBank:
    """A small FailureBank of native-built states whose privileged label matches the intended mode."""
    task = drawer_task
    rng = np.random.default_rng(0)
    data = mujoco.MjData(task.mj_model)
    rows, modes, stages = [], [], []
    for m_i, mode in enumerate(task.failure_modes):
        kept = 0
        while kept < 12:
            row = _make_state(task, mode, rng)
            label, stage = task.label(native.privileged_state(task, row, data=data))
            if int(label) != m_i:
                continue
            row["obs"] = native.observe_state(task, row, data=data)
            rows.append(row), modes.append(m_i), stages.append(int(stage))
            kept += 1
    arrays = {k: np.stack([r[k] for r in rows]).astype(np.float32) for k in rows[0]}
    arrays.update(mode=np.array(modes, np.int32), stage=np.array(stages, np.int32),
                  split=(np.arange(len(rows)) % 3 == 0).astype(np.int32))
    return FailureBank(task.name, task.failure_modes, task.recovery_stages, arrays, {"source": "test"})


@pytest.fixture(scope="module")
def frames(drawer_task, labelled_bank):
    """PNG frames (front, wrist) of the first state of each mode, and their RGB arrays."""
    from recovla_jax.sim.render import bank_row

    out = {}
    with FrameRenderer(drawer_task.mj_model) as renderer:
        for m_i, mode in enumerate(drawer_task.failure_modes):
            i = int(np.flatnonzero(labelled_bank.arrays["mode"] == m_i)[0])
            out[mode] = {"index": i, "rgb": renderer.render(bank_row(labelled_bank, i)),
                         "png": renderer.render_png(bank_row(labelled_bank, i))}
    return out


def _observation(task, bank, index, png=None) -> FailureObservation:
    label = PrivilegedLabel(bank.modes[bank.arrays["mode"][index]], bank.stages[bank.arrays["stage"][index]])
    return FailureObservation(images=png or {}, obs=bank.arrays["obs"][index], privileged=label, state_id=f"bank:{index}")


# ------------------------------------------------------------------------------- native state + render
def test_native_observation_matches_mjx(drawer_task, labelled_bank):
    """The native observe helper reproduces MJX's observe() on the same states (cabinet pose included)."""
    import jax
    import jax.numpy as jnp
    from mujoco import mjx

    task = drawer_task
    model = mjx.put_model(task.mj_model)

    @jax.jit
    def observe(qpos, qvel):
        d = task.data_template.replace(qpos=qpos, qvel=qvel)
        return task.observe(model, mjx.kinematics(model, d))

    a = labelled_bank.arrays
    for i in (0, 13, 30):
        want = observe(*(jnp.asarray(a[k][i]) for k in ("qpos", "qvel")))
        np.testing.assert_allclose(a["obs"][i], np.asarray(want), atol=2e-5)
    # the randomized cabinet pose really moves the handle (it did not under a mocap cabinet in MJX)
    handles = a["obs"][:, 13:16]
    assert handles.std(axis=0).max() > 0.02


def test_frames_nonblank_and_differ_between_cameras_and_modes(frames, drawer_task):
    for mode, f in frames.items():
        for cam, rgb in f["rgb"].items():
            assert rgb.shape == (240, 320, 3) and rgb.dtype == np.uint8
            assert rgb.std() > 15, (mode, cam)  # not a blank/flat frame
            assert f["png"][cam].startswith(b"\x89PNG")
        diff = np.abs(f["rgb"]["front"].astype(int) - f["rgb"]["wrist"].astype(int)).mean()
        assert diff > 10, mode
    modes = list(frames)
    for cam in ("front", "wrist"):
        for a in range(len(modes)):
            for b in range(a + 1, len(modes)):
                d = np.abs(frames[modes[a]]["rgb"][cam].astype(int) - frames[modes[b]]["rgb"][cam].astype(int)).mean()
                assert d > 2, (cam, modes[a], modes[b], d)


def test_render_deterministic_and_bank_frames_written(drawer_task, labelled_bank, tmp_path, frames):
    from recovla_jax.sim.render import bank_row, render_bank_frames

    with FrameRenderer(drawer_task.mj_model) as r:
        i = frames["missed_handle"]["index"]
        assert r.render_png(bank_row(labelled_bank, i)) == frames["missed_handle"]["png"]  # same bytes -> same cache key
    paths = render_bank_frames(drawer_task, labelled_bank, tmp_path, indices=[0, 5])
    assert sorted(p.name for p in paths) == ["0_front.png", "0_wrist.png", "5_front.png", "5_wrist.png"]
    assert all(p.parent == tmp_path / "frames" and p.stat().st_size > 1000 for p in paths)


def test_render_backend_error_names_backends_and_fix(drawer_task, monkeypatch):
    from recovla_jax.sim import render

    def broken(*a, **k):
        raise RuntimeError("eglInitialize failed")

    monkeypatch.setattr(render.mujoco, "Renderer", broken)
    monkeypatch.setattr(render, "_probe_backends",
                        lambda exclude: {"osmesa": "fails (no libOSMesa)", "glfw": "fails (no display)"})
    with pytest.raises(RenderBackendError,
                       match=r"Tried: MUJOCO_GL=egl: fails .*eglInitialize.*osmesa.*glfw.*Fix: install Mesa's EGL"):
        FrameRenderer(drawer_task.mj_model)
    with pytest.raises(ValueError, match="not in the scene"):
        FrameRenderer(drawer_task.mj_model, cameras=("front", "nope"))


# ------------------------------------------------------------------------------------ rules / oracle
def test_rules_accuracy_floor_from_observation_only(drawer_task, labelled_bank):
    task, a = drawer_task, labelled_bank.arrays
    sel = RulesSelector()
    hits_mode = hits_stage = 0
    for i in range(len(labelled_bank)):
        obs = FailureObservation(images={}, obs=a["obs"][i], privileged=None)  # no label reachable
        d = sel.diagnose(task, obs).descriptor
        hits_mode += d.failure_mode == task.failure_modes[a["mode"][i]]
        hits_stage += d.recovery_stage == task.recovery_stages[a["stage"][i]]
        assert d.source == "rules" and d.reward_mask == task.oracle_masks[d.failure_mode]
        d.validate_for(task)
    n = len(labelled_bank)
    assert hits_mode / n >= RULES_ACCURACY_FLOOR and hits_stage / n >= RULES_ACCURACY_FLOOR, (hits_mode, hits_stage, n)
    # a state no rule describes (jaws closed on the handle) still gets a valid answer
    row = _make_state(task, "missed_handle", np.random.default_rng(1))
    priv = native.privileged_state(task, row)
    row["qpos"][list(task.gripper.arm_qpos[:3])] += priv["handle_pos"] - priv["tcp_pos"]
    d = sel.diagnose(task, FailureObservation(images={}, obs=native.observe_state(task, row))).descriptor
    assert d.failure_mode in task.failure_modes and d.recovery_stage in ("grasp", "pull")
    with pytest.raises(RuntimeError, match="shape"):
        sel.diagnose(task, FailureObservation(images={}, obs=np.zeros(5)))


def test_oracle_reads_label_and_needs_it(drawer_task, labelled_bank):
    sel = make_selector("oracle", drawer_task)
    r = sel.diagnose(drawer_task, _observation(drawer_task, labelled_bank, 0))
    assert (r.descriptor.source == "oracle"
            and r.descriptor.failure_mode == drawer_task.failure_modes[labelled_bank.arrays["mode"][0]])
    with pytest.raises(ValueError, match="privileged"):
        sel.diagnose(drawer_task, FailureObservation(images={}, obs=labelled_bank.arrays["obs"][0]))


# --------------------------------------------------------------------------------- fake Gemini server
class FakeGemini:
    """A local generateContent endpoint: answers from a queue of (status, body, delay_s); records requests."""

    def __init__(self):
        self.queue: list[tuple[int, str, float]] = []
        self.requests: list[dict] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                fake.requests.append({"path": self.path, "headers": dict(self.headers), "json": json.loads(body)})
                status, text, delay = fake.queue.pop(0) if fake.queue else (500, '{"error": "empty queue"}', 0.0)
                time.sleep(delay)
                try:
                    payload = text.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    self.wfile.write(payload)
                except OSError:
                    pass  # the client timed out and hung up

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.server.block_on_close = False
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def answer(self, answer: dict | str, status: int = 200, delay: float = 0.0) -> None:
        text = answer if isinstance(answer, str) else json.dumps(answer)
        body = {"candidates": [{"content": {"parts": [{"text": text}], "role": "model"}, "finishReason": "STOP"}]}
        self.queue.append((status, json.dumps(body), delay))

    def error(self, status: int, message: str = "rate limited", retry_delay: str | None = None) -> None:
        body = {"error": {"code": status, "message": message, "status": "RESOURCE_EXHAUSTED" if status == 429 else "INTERNAL"}}
        if retry_delay is not None:  # what a quota 429 carries: how long to wait
            body["error"]["details"] = [{"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": retry_delay}]
        self.queue.append((status, json.dumps(body), 0.0))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def gemini_server(monkeypatch):
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    server = FakeGemini()
    yield server
    server.close()


def _good_answer(task, mode="missed_handle", stage="reopen") -> dict:
    return {"failure_mode": mode, "recovery_stage": stage, "rationale": "jaws closed beside the handle",
            "reward_mask": [{"component": c, "weight": w} for c, w in task.oracle_masks[mode].items()]}


def _gemini(task, server, tmp_path=None, **kw):
    kw.setdefault("use_cache", False)
    kw.setdefault("timeout_s", 5.0)
    kw.setdefault("backoff_initial_s", 0.01)
    return make_selector("gemini", task, base_url=server.url,
                         cache_path=(tmp_path / "cache.jsonl") if tmp_path else None, **kw)


def test_gemini_good_answer_and_request_shape(drawer_task, labelled_bank, frames, gemini_server):
    task = drawer_task
    f = frames["missed_handle"]
    gemini_server.answer(_good_answer(task))
    result = _gemini(task, gemini_server).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    d, rec = result.descriptor, result.record
    assert d.source == "gemini" and d.failure_mode == "missed_handle" and d.recovery_stage == "reopen"
    assert d.reward_mask == task.oracle_masks["missed_handle"]
    assert (not rec.fallback_used and rec.attempts == 1 and rec.errors == []
            and json.loads(rec.raw_text)["failure_mode"] == "missed_handle")

    (req,) = gemini_server.requests
    assert req["path"].endswith("/models/gemini-2.5-flash:generateContent")
    assert req["headers"]["x-goog-api-key"] == SECRET  # the key travels in the header only
    parts = req["json"]["contents"][0]["parts"]
    inline = [p["inlineData"] for p in parts if "inlineData" in p]
    # google-genai sends inline bytes as URL-safe base64
    assert [base64.urlsafe_b64decode(i["data"]) for i in inline] == [f["png"][c] for c in ("front", "wrist")]
    assert all(i["mime_type"] == "image/png" for i in inline)
    prompt = "\n".join(p["text"] for p in parts if "text" in p)
    assert task.instruction in prompt and all(m in prompt for m in task.failure_modes) and "pull_drawer" in prompt
    cfg = req["json"]["generationConfig"]
    assert cfg["temperature"] == 0 and cfg["responseMimeType"] == "application/json"
    props = cfg["responseSchema"]["properties"]
    assert props["failure_mode"]["enum"] == list(task.failure_modes)
    assert props["recovery_stage"]["enum"] == list(task.recovery_stages)
    assert props["reward_mask"]["type"] == "ARRAY" and "weight" in props["reward_mask"]["items"]["properties"]


@pytest.mark.parametrize("answer, error", [
    ("{not json", "unparseable JSON"),
    ({"failure_mode": "dropped_cup", "recovery_stage": "reach", "reward_mask": [{"component": "success", "weight": 1}]},
     "unknown failure mode 'dropped_cup'"),
    ({"failure_mode": "missed_handle", "recovery_stage": "fly", "reward_mask": [{"component": "success", "weight": 1}]},
     "unknown recovery stage 'fly'"),
    ({"failure_mode": "missed_handle", "recovery_stage": "reach", "reward_mask": [{"component": "pul_drawer", "weight": 1}]},
     "unknown reward component"),
    ({"failure_mode": "missed_handle", "recovery_stage": "reach", "reward_mask": [{"component": "success", "weight": -2}]},
     "must be in [0, 100]"),
    ('{"failure_mode": "missed_handle", "recovery_stage": "reach", "reward_mask": [{"component": "success", "weight": NaN}]}',
     "must be in [0, 100]"),
    # finite as a Python float, inf as the float32 the reward function takes: it would turn PPO's rewards into NaN
    ({"failure_mode": "missed_handle", "recovery_stage": "reach", "reward_mask": [{"component": "success", "weight": 1e39}]},
     "must be in [0, 100]"),
    ({"failure_mode": "missed_handle", "recovery_stage": "reach", "reward_mask": []}, "empty reward mask"),
    ({"failure_mode": "missed_handle"}, "does not match the schema"),
])
def test_gemini_invalid_answers_fall_back_and_are_recorded(drawer_task, labelled_bank, frames, gemini_server, answer, error):
    task, f = drawer_task, frames["slipped_off"]
    gemini_server.answer(answer)
    result = _gemini(task, gemini_server).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    rec = result.record
    assert rec.fallback_used and rec.fallback == "rules" and result.descriptor.source == "rules"
    assert result.descriptor.failure_mode == "slipped_off"  # the rules answered correctly
    assert any(error in e for e in rec.errors), rec.errors
    assert rec.raw_text == (answer if isinstance(answer, str) else json.dumps(answer))


def test_gemini_without_images_falls_back_without_request(drawer_task, labelled_bank, gemini_server):
    result = _gemini(drawer_task, gemini_server).diagnose(drawer_task, _observation(drawer_task, labelled_bank, 0))
    assert result.record.fallback_used and "no camera images" in result.record.errors[0] and not gemini_server.requests


def test_gemini_retries_429_then_succeeds(drawer_task, labelled_bank, frames, gemini_server):
    task, f = drawer_task, frames["misaligned_gripper"]
    gemini_server.error(429)
    gemini_server.answer(_good_answer(task, "misaligned_gripper", "reorient"))
    result = _gemini(task, gemini_server).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    assert len(gemini_server.requests) == 2
    assert result.record.attempts == 2 and not result.record.fallback_used and result.descriptor.source == "gemini"
    assert "HTTP 429" in result.record.errors[0]


def test_a_429_waits_as_long_as_the_server_asks(drawer_task, labelled_bank, frames, gemini_server):
    """A per-minute quota answers 429 with a RetryInfo delay; retrying on the 10 ms backoff of this test would spend
    every attempt inside the quota window."""
    task, f = drawer_task, frames["misaligned_gripper"]
    gemini_server.error(429, retry_delay="0.4s")
    gemini_server.answer(_good_answer(task, "misaligned_gripper", "reorient"))
    t0 = time.perf_counter()
    result = _gemini(task, gemini_server).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    assert time.perf_counter() - t0 >= 0.4 and result.record.attempts == 2 and not result.record.fallback_used


def test_gemini_server_errors_exhaust_retries_then_fall_back(drawer_task, labelled_bank, frames, gemini_server):
    task, f = drawer_task, frames["missed_handle"]
    for _ in range(3):
        gemini_server.error(503, "overloaded")
    result = _gemini(task, gemini_server, max_attempts=3).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    assert len(gemini_server.requests) == 3 and result.record.attempts == 3
    assert result.record.fallback_used and "HTTP 503" in result.record.errors[-1]
    gemini_server.requests.clear()
    gemini_server.error(400, "bad request")  # not retried
    result = _gemini(task, gemini_server).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    assert len(gemini_server.requests) == 1 and result.record.fallback_used and "HTTP 400" in result.record.errors[-1]


@pytest.mark.parametrize("status, message", [(404, "models/gemini-9 is not found"), (403, "permission denied"),
                                             (400, "API key not valid. reason: API_KEY_INVALID")])
def test_a_misconfigured_vlm_stops_instead_of_answering_every_state_from_the_fallback(
        drawer_task, labelled_bank, frames, gemini_server, status, message):
    """A wrong model name or key fails every request alike: falling back state by state would make a run labelled
    "gemini" a rules run. It raises at once, names what to check, and does not retry."""
    from recovla_jax.diagnosis.gemini import VLMConfigurationError

    task, f = drawer_task, frames["missed_handle"]
    gemini_server.error(status, message)
    with pytest.raises(VLMConfigurationError, match=rf"HTTP {status}.*Check the API key .* and the model name") as err:
        _gemini(task, gemini_server).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    assert len(gemini_server.requests) == 1 and SECRET not in str(err.value)


def test_gemini_timeout_falls_back(drawer_task, labelled_bank, frames, gemini_server):
    task, f = drawer_task, frames["missed_handle"]
    gemini_server.answer(_good_answer(task), delay=3.0)
    t0 = time.perf_counter()
    result = _gemini(task, gemini_server, timeout_s=0.5).diagnose(task, _observation(task, labelled_bank, f["index"], f["png"]))
    assert time.perf_counter() - t0 < 2.5
    assert result.record.fallback_used and "Timeout" in result.record.errors[-1], result.record.errors


def test_api_key_never_logged_or_stored(drawer_task, labelled_bank, frames, gemini_server, tmp_path, caplog, capsys):
    task, f = drawer_task, frames["missed_handle"]
    caplog.set_level(logging.DEBUG)
    sel = _gemini(task, gemini_server, tmp_path, use_cache=True)
    obs = _observation(task, labelled_bank, f["index"], f["png"])
    gemini_server.answer(_good_answer(task))
    gemini_server.error(429)
    gemini_server.error(500)
    gemini_server.answer("{broken")
    results = [sel.diagnose(task, obs)]  # cached afterwards
    other = _observation(task, labelled_bank, frames["slipped_off"]["index"], frames["slipped_off"]["png"])
    results.append(sel.diagnose(task, other))  # 429, 500, then broken -> fallback
    assert results[1].record.fallback_used and results[1].record.attempts == 3
    blob = "\n".join(r.model_dump_json() for r in results) + repr(sel)
    out = capsys.readouterr()
    for text in (blob, caplog.text, out.out, out.err, (tmp_path / "cache.jsonl").read_text()):
        assert SECRET not in text
    assert "gemini diagnosis of bank:" in caplog.text  # the failure was logged, without the key


def test_cache_hit_makes_no_request_and_offline_replay(drawer_task, labelled_bank, frames, gemini_server, tmp_path, monkeypatch):
    task, f = drawer_task, frames["missed_handle"]
    obs = _observation(task, labelled_bank, f["index"], f["png"])
    gemini_server.answer(_good_answer(task))
    first = _gemini(task, gemini_server, tmp_path, use_cache=True).diagnose(task, obs)
    assert first.descriptor.source == "gemini" and not first.record.cache_hit and len(gemini_server.requests) == 1
    second = _gemini(task, gemini_server, tmp_path, use_cache=True).diagnose(task, obs)  # fresh selector, same file
    assert len(gemini_server.requests) == 1
    assert second.record.cache_hit and second.descriptor.source == "cached:gemini"
    assert second.descriptor.reward_mask == first.descriptor.reward_mask and second.record.cache_key == first.record.cache_key

    # offline replay needs no key; a miss (other frames) goes to the fallback without a request
    monkeypatch.delenv("GEMINI_API_KEY")
    replay = make_selector("cached", task, cache_path=tmp_path / "cache.jsonl", base_url=gemini_server.url)
    assert replay.diagnose(task, obs).record.cache_hit
    # ... for the endpoint that answered: a local server's answers never replay as the real Gemini's
    default_endpoint = make_selector("cached", task, cache_path=tmp_path / "cache.jsonl").diagnose(task, obs)
    assert not default_endpoint.record.cache_hit and default_endpoint.record.fallback_used
    g = frames["slipped_off"]
    miss = replay.diagnose(task, _observation(task, labelled_bank, g["index"], g["png"]))
    assert miss.record.fallback_used and "cache miss" in miss.record.errors[0] and len(gemini_server.requests) == 1
    # an invalid answer is not cached: the next run asks again
    monkeypatch.setenv("GEMINI_API_KEY", SECRET)
    gemini_server.answer("{nope")
    _gemini(task, gemini_server, tmp_path, use_cache=True).diagnose(task, _observation(task, labelled_bank, g["index"], g["png"]))
    assert len((tmp_path / "cache.jsonl").read_text().splitlines()) == 1


def test_rules_selector_needs_the_tasks_rules_module(drawer_task):
    assert make_selector("rules", drawer_task).name == "rules"
    no_rules = object.__new__(type("NoRulesTask", (type(drawer_task),), {"name": "no_such_task"}))
    no_rules.__dict__.update(drawer_task.__dict__)
    assert not no_rules.has_rules()
    with pytest.raises(ValueError, match="no diagnosis rules"):
        make_selector("rules", no_rules)


def test_missing_key_and_auto(drawer_task, monkeypatch):
    monkeypatch.delenv("GEMINI_API_KEY", raising=False)
    monkeypatch.delenv("GOOGLE_API_KEY", raising=False)
    with pytest.raises(MissingAPIKeyError, match="GEMINI_API_KEY"):
        make_selector("gemini", drawer_task)
    assert resolve_auto()[0] == "rules" and make_selector("auto", drawer_task).name == "rules"
    monkeypatch.setenv("GOOGLE_API_KEY", SECRET)
    name, why = resolve_auto()
    assert name == "gemini" and "GOOGLE_API_KEY" in why and SECRET not in why
    with pytest.raises(ValueError, match="unknown selector"):
        make_selector("gpt", drawer_task)


# --------------------------------------------------------------------------- bank diagnosis and report
def test_descriptor_for_mode_votes(drawer_task, labelled_bank):
    task = drawer_task
    all_modes = descriptors_for_bank(task, labelled_bank, RulesSelector(), k=4)
    assert set(all_modes) == set(task.failure_modes)
    for mode, md in all_modes.items():
        assert md.k == 4 and md.agreement == 1.0 and md.matches_label and md.descriptor.failure_mode == mode
        assert md.descriptor.reward_mask == task.oracle_masks[mode] and md.descriptor.source == "rules"
        assert all(labelled_bank.arrays["split"][int(s.split(":")[1])] == 0 for s in md.state_ids)  # train states
    # repeatable for a seed
    again = descriptor_for_mode(task, labelled_bank, "slipped_off", RulesSelector(), k=4)
    assert again.state_ids == all_modes["slipped_off"].state_ids

    def res(mode, stage, mask, source="gemini"):
        d = RecoveryDescriptor(task=task.name, failure_mode=mode, recovery_stage=stage, reward_mask=mask, source=source)
        return DiagnosisResult(descriptor=d, record=DiagnosisRecord(selector=source))

    votes = [res("slipped_off", "reach", {"pull_drawer": 2.0, "success": 10.0}),
             res("slipped_off", "reach", {"pull_drawer": 4.0, "success": 10.0}),
             res("slipped_off", "grasp", {"pull_drawer": 3.0, "success": 12.0}, source="rules"),
             res("missed_handle", "reopen", {"success": 1.0})]
    d, mode_votes, stage_votes = majority_descriptor(task, votes)
    assert d.failure_mode == "slipped_off" and d.recovery_stage == "reach" and mode_votes["slipped_off"] == 3
    assert d.reward_mask == {"pull_drawer": 3.0, "success": 10.0} and d.source == "gemini+rules"
    # a 2-2 tie goes to the mode the selector itself named more often, not to the task's first mode
    fallback = DiagnosisRecord(selector="gemini", fallback_used=True, fallback="rules")
    tie = [DiagnosisResult(descriptor=RecoveryDescriptor(task=task.name, failure_mode="missed_handle",
                                                         recovery_stage="reopen", reward_mask={"success": 1.0},
                                                         source="rules"), record=fallback)] * 2
    tie += [res("slipped_off", "reach", {"success": 1.0}), res("slipped_off", "reach", {"success": 1.0})]
    assert task.failure_modes.index("missed_handle") < task.failure_modes.index("slipped_off")
    assert majority_descriptor(task, tie)[0].failure_mode == "slipped_off"


def test_diagnose_bank_score_and_cli(drawer_task, labelled_bank, tmp_path):
    from experiments.diagnose import main

    task = drawer_task
    results = diagnose_bank(task, labelled_bank, RulesSelector())
    true_m = [task.failure_modes[i] for i in labelled_bank.arrays["mode"]]
    true_s = [task.recovery_stages[i] for i in labelled_bank.arrays["stage"]]
    report = score(task, results, true_m, true_s, ["train"] * len(results))
    assert report["n"] == len(labelled_bank) and report["mode_accuracy"]["rate"] >= RULES_ACCURACY_FLOOR
    assert np.trace(report["confusion_mode"]) == report["mode_accuracy"]["successes"]
    assert report["per_mode"]["missed_handle"]["n"] == 12

    labelled_bank.save(tmp_path / "bank")
    out = main(["--task=drawer", f"--bank-dir={tmp_path / 'bank'}", "--selector=rules", "--selector=oracle",
                f"--out={tmp_path / 'out'}", "--num-states=20"])
    summary = json.loads((out / "diagnosis.json").read_text())
    assert set(summary["selectors"]) == {"rules", "oracle"} and summary["n"] == 20
    assert summary["selectors"]["oracle"]["mode_accuracy"]["rate"] == 1.0
    assert "ci_low" in summary["selectors"]["rules"]["mode_accuracy"]
    md = (out / "diagnosis.md").read_text()
    assert "| true \\ predicted |" in md and "Wilson" in md
    assert (out / "confusion_rules.png").stat().st_size > 1000
    assert len((out / "records_rules.jsonl").read_text().splitlines()) == 20
    # Another task's bank: a clear exit naming the bank's task, before any state is diagnosed.
    with pytest.raises(SystemExit, match="collected for task 'drawer'"):
        main(["--task=stack", f"--bank-dir={tmp_path / 'bank'}", "--selector=rules", f"--out={tmp_path / 'other'}"])


def test_cli_gemini_end_to_end_then_cached_rerun(drawer_task, labelled_bank, gemini_server, tmp_path):
    """--selector=gemini renders frames, asks the server once per state, and a rerun is served from the cache."""
    from experiments.diagnose import main

    labelled_bank.save(tmp_path / "bank")
    indices = np.sort(np.random.default_rng(0).choice(len(labelled_bank), size=3, replace=False))
    for i in indices:
        m = drawer_task.failure_modes[labelled_bank.arrays["mode"][i]]
        gemini_server.answer(_good_answer(drawer_task, m, drawer_task.recovery_stages[labelled_bank.arrays["stage"][i]]))
    args = ["--task=drawer", f"--bank-dir={tmp_path / 'bank'}", "--selector=gemini", "--num-states=3",
            f"--base-url={gemini_server.url}", f"--cache={tmp_path / 'cache.jsonl'}", "--timeout=5"]
    out = main(args + [f"--out={tmp_path / 'a'}"])
    rep = json.loads((out / "diagnosis.json").read_text())["selectors"]["cached:gemini"]
    assert rep["mode_accuracy"]["rate"] == 1.0 and rep["fallbacks"] == 0 and rep["cache_hits"] == 0
    assert len(gemini_server.requests) == 3 and len(list((out / "frames").glob("*.png"))) == 6
    out = main(args + [f"--out={tmp_path / 'b'}"])
    rep = json.loads((out / "diagnosis.json").read_text())["selectors"]["cached:gemini"]
    assert rep["cache_hits"] == 3 and len(gemini_server.requests) == 3
    assert SECRET not in (out / "records_cached_gemini.jsonl").read_text() + (out / "config.json").read_text()


def test_reward_weight_overrides_every_mask_and_rejects_bad_input(drawer_task):
    """`--reward-weight COMPONENT=WEIGHT`: set in every mode's mask, 0 drops the component, and a name or value
    that cannot work is refused (before any work) with the valid choices."""
    from experiments.diagnosis_stage import apply_reward_weights
    from experiments.train import build_parser
    from recovla_jax.diagnosis.descriptor import oracle_descriptor

    descriptors = {m: oracle_descriptor(drawer_task, m) for m in drawer_task.failure_modes}
    apply_reward_weights(drawer_task, descriptors, [("residual_magnitude", 0.0), ("success", 5.0)])
    for m, d in descriptors.items():
        assert "residual_magnitude" not in d.reward_mask and d.reward_mask["success"] == 5.0
        assert "residual_magnitude" in drawer_task.oracle_masks[m]  # the task's own table is untouched
    with pytest.raises(SystemExit, match="unknown component 'knock'.*valid components: reach_handle, align"):
        apply_reward_weights(drawer_task, descriptors, [("knock", 1.0)])

    args = build_parser().parse_args(["--reward-weight=success=3", "--reward-weight", "align=0"])
    assert args.reward_weight == [("success", 3.0), ("align", 0.0)]
    for bad in ("success", "success=-1", "=2", "success=x", "success=inf", "success=nan"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([f"--reward-weight={bad}"])


def test_expert_warm_start_switches_the_adaptive_learning_rate_and_frozen_normalizer_on_unless_given():
    from experiments.train import apply_warm_start_defaults, build_parser

    def parsed(*argv):
        return apply_warm_start_defaults(build_parser().parse_args(list(argv)))

    assert (parsed().desired_kl, parsed().freeze_normalizer) == (None, False)
    assert (parsed("--expert-warm-start=2").desired_kl, parsed("--expert-warm-start=2").freeze_normalizer) == (0.01, True)
    assert parsed("--expert-warm-start=2", "--desired-kl=0.02").desired_kl == 0.02
    off = parsed("--expert-warm-start=2", "--desired-kl=0", "--no-freeze-normalizer")
    assert (off.desired_kl, off.freeze_normalizer) == (None, False)
    for bad in ("-0.1", "nan", "inf", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([f"--desired-kl={bad}"])
    # a policy the teacher gate leaves to plain PPO trains as without --expert-warm-start, or as told
    assert parsed("--expert-warm-start=2").ppo_without_warm_start == {"desired_kl": None, "freeze_normalizer": False}
    assert parsed("--expert-warm-start=2", "--desired-kl=0.02").ppo_without_warm_start["desired_kl"] == 0.02
    assert parsed().warm_start_min_teacher == 0.0 and parsed("--warm-start-min-teacher=0.8").warm_start_min_teacher == 0.8
    assert parsed().warm_start_fallback and not parsed("--no-warm-start-fallback").warm_start_fallback
    for bad in ("-0.1", "1.5", "nan", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([f"--warm-start-min-teacher={bad}"])
    assert parsed("--warm-start-fit-steps=8000").warm_start_fit_steps == 8000
    for bad in ("0", "-5", "1.5", "x"):
        with pytest.raises(SystemExit):
            build_parser().parse_args([f"--warm-start-fit-steps={bad}"])
    # the residual actor's widths: PPO's default unless given; anything but positive whole widths is refused
    from recovla_jax.training.ppo import PPOConfig

    assert parsed().actor_hidden == PPOConfig.model_fields["actor_hidden"].default
    assert parsed("--actor-hidden=512,512,512").actor_hidden == (512, 512, 512)
    assert parsed("--actor-hidden= 64").actor_hidden == (64,)
    for bad in ("0,256", "256,", "a,b", "-1", "1.5", ""):
        with pytest.raises(SystemExit):
            build_parser().parse_args([f"--actor-hidden={bad}"])


def test_resume_refuses_options_that_would_not_continue_the_checkpointed_training(tmp_path):
    from experiments.pipeline import check_resume_matches

    check_resume_matches(tmp_path, {"desired_kl": 0.01})  # nothing to resume: nothing to compare
    (tmp_path / "config.json").write_text(json.dumps({"num_envs": 128, "policy": "per-mode"}))  # an older run
    check_resume_matches(tmp_path, {"num_envs": 128, "policy": "per-mode", "desired_kl": None, "freeze_normalizer": False})
    with pytest.raises(SystemExit, match=r"desired_kl: run None, now 0.01.*freeze_normalizer: run False, now True"):
        check_resume_matches(tmp_path, {"num_envs": 128, "policy": "per-mode", "desired_kl": 0.01, "freeze_normalizer": True})
    with pytest.raises(SystemExit, match="num_envs: run 128, now 4096"):
        check_resume_matches(tmp_path, {"num_envs": 4096, "policy": "per-mode"})
    # a run trained at alpha 1 (the config's default when it predates the key) resumed under a task recipe's alpha 2
    # would continue with twice the residual scale: refused, naming the recipe that set it
    with pytest.raises(SystemExit, match=r"alpha: run 1.0, now 2.0.*task recipe set \['alpha'\] \(--no-task-recipe"):
        check_resume_matches(tmp_path, {"num_envs": 128, "policy": "per-mode", "alpha": 2.0, "task_recipe": {"alpha": 2.0}})
    (tmp_path / "config.json").write_text(json.dumps({"num_envs": 128, "policy": "per-mode", "episode_length": 80}))
    with pytest.raises(SystemExit, match="episode_length: run 80, now 160"):
        check_resume_matches(tmp_path, {"num_envs": 128, "policy": "per-mode", "episode_length": 160})
    # the actor's widths set the checkpoint's layout: compared as config.json holds them (a list), a run from before the
    # option had PPO's default
    (tmp_path / "config.json").write_text(json.dumps({"num_envs": 128, "policy": "per-mode", "actor_hidden": [512, 512]}))
    check_resume_matches(tmp_path, {"num_envs": 128, "policy": "per-mode", "actor_hidden": (512, 512)})
    with pytest.raises(SystemExit, match=r"actor_hidden: run \[512, 512\], now \[256, 256\]"):
        check_resume_matches(tmp_path, {"num_envs": 128, "policy": "per-mode", "actor_hidden": (256, 256)})
    (tmp_path / "config.json").write_text(json.dumps({"num_envs": 128, "policy": "per-mode"}))
    check_resume_matches(tmp_path, {"num_envs": 128, "policy": "per-mode", "actor_hidden": (256, 256)})


def test_main_job_refuses_unknown_modes_and_components_before_any_work(tmp_path):
    from experiments.train import main

    run_dir = tmp_path / "run"
    with pytest.raises(SystemExit, match=r"--modes: unknown failure mode\(s\) \['nope'\].*valid: missed_handle"):
        main(["--task=drawer", "--modes=missed_handle,nope", f"--run-dir={run_dir}"])
    with pytest.raises(SystemExit, match="--reward-weight: unknown component 'knock'"):
        main(["--task=drawer", "--reward-weight=knock=1", f"--run-dir={run_dir}"])
    with pytest.raises(SystemExit, match="--hand-back-delay must be >= 0 and needs --hand-back"):
        main(["--task=drawer", "--hand-back-delay=20", f"--run-dir={run_dir}"])
    with pytest.raises(SystemExit, match="--hand-back-delay must be >= 0"):
        main(["--task=drawer", "--hand-back", "--hand-back-delay=-1", f"--run-dir={run_dir}"])
    with pytest.raises(SystemExit, match=r"--expert-path-starts must be in \[0, 1\)"):
        main(["--task=drawer", "--expert-path-starts=1", f"--run-dir={run_dir}"])
    with pytest.raises(SystemExit, match="--expert-path-stride in \\[1, episode length 100\\]"):
        main(["--task=drawer", "--expert-path-starts=0.5", "--expert-path-stride=0", f"--run-dir={run_dir}"])
    assert not run_dir.exists()  # nothing written, no base cloned


def test_main_job_diagnosis_stage_uses_selector_and_wrong_mask_swaps(drawer_task, labelled_bank, tmp_path, monkeypatch):
    """The training pipeline's diagnosis stage: auto -> rules without a key, one descriptor per mode by vote,
    diagnosis.json written; --mask=wrong hands every mode another mode's descriptor."""
    import argparse

    from experiments.diagnosis_stage import diagnose_modes

    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    args = argparse.Namespace(selector="auto", fallback_selector="rules", diagnose_states=3, seed=0, mask="selected",
                              residual_penalty=None)
    descriptors, record = diagnose_modes(drawer_task, labelled_bank, args, tmp_path)
    assert record["selector"] == "rules"
    assert set(descriptors) == set(drawer_task.failure_modes)
    for m, d in descriptors.items():
        assert d.failure_mode == m and d.source == "rules" and record["per_mode"][m]["k"] == 3
    assert json.loads((tmp_path / "diagnosis.json").read_text())["selector"] == "rules"

    wrong, record = diagnose_modes(drawer_task, labelled_bank, argparse.Namespace(**{**vars(args), "mask": "wrong"}),
                                   tmp_path)
    for m, d in wrong.items():
        assert d.failure_mode != m and d.source.startswith("wrong-mask")
        assert d.reward_mask == descriptors[d.failure_mode].reward_mask
        assert record["wrong_mask"][m]["descriptor_of"] == d.failure_mode and record["wrong_mask"][m]["mask_l1_distance"] > 0
    assert json.loads((tmp_path / "diagnosis.json").read_text())["wrong_mask"] == record["wrong_mask"]


@pytest.mark.parametrize("task_name", ["drawer", "pick_place", "stack", "peg_insert"])
def test_the_wrong_mask_ablation_never_hands_a_mode_its_own_mask(task_name):
    """pick_place's missed_grasp and dropped_in_transit share a mask (so do stack's toppled_stack and
    placed_off_centre): "the next mode's descriptor" trained those modes on their own mask. The swap takes the
    other mode whose mask is farthest in L1, and says how far."""
    from experiments.diagnosis_stage import mask_distance, wrong_descriptors
    from recovla_jax.diagnosis.descriptor import oracle_descriptor
    from recovla_jax.tasks.registry import get_task

    task = get_task(task_name)
    own = {m: oracle_descriptor(task, m) for m in task.failure_modes}
    wrong, swaps = wrong_descriptors(task, own)
    for m, d in wrong.items():
        distances = {o: mask_distance(own[m].reward_mask, own[o].reward_mask) for o in task.failure_modes if o != m}
        assert d.failure_mode == swaps[m]["descriptor_of"] != m
        assert d.reward_mask != own[m].reward_mask
        assert swaps[m]["mask_l1_distance"] == max(distances.values()) > 0
        assert f"L1 distance {swaps[m]['mask_l1_distance']:g}" in d.rationale


def test_main_job_then_finetune_baseline_end_to_end_on_a_tiny_budget(drawer_task, drawer_base_policy, labelled_bank,
                                                                     tmp_path, monkeypatch):
    """`experiments.train` (one mode, 2 PPO iterations) on a saved bank, then `experiments.baselines --method=finetune`
    on that run: every stage runs and leaves the files the report, export and runtime read. The cached test base
    stands in for the cloned one (cloning the default base takes minutes)."""
    import experiments.pipeline as pipeline
    from experiments.baselines import main as baselines_main
    from experiments.train import main as train_main

    for var in ("GEMINI_API_KEY", "GOOGLE_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(pipeline, "load_or_train_base_policy", lambda task, log=None: drawer_base_policy)
    from recovla_jax.failures.bank import FailureBank

    n, model = len(labelled_bank), drawer_task.mj_model  # the fixture's native rows carry no mocap arrays (the scene has none)
    arrays = {"mocap_pos": np.zeros((n, model.nmocap, 3), np.float32), "mocap_quat": np.zeros((n, model.nmocap, 4), np.float32),
              **labelled_bank.arrays}
    FailureBank(labelled_bank.task, labelled_bank.modes, labelled_bank.stages, arrays, labelled_bank.meta).save(tmp_path / "bank")
    run = tmp_path / "run"
    train_main(["--task=drawer", f"--run-dir={run}", f"--bank-dir={tmp_path / 'bank'}", "--modes=missed_handle",
                "--num-envs=8", "--timesteps=160", "--unroll-length=10", "--episode-length=20", "--diagnose-states=2",
                "--checkpoint-every=1", "--expert-warm-start=1", "--actor-hidden=32,32"])
    results = json.loads((run / "results.json").read_text())
    # one DAgger round: the expert-guided rollouts, the fit's own, the fresh policy's and the fit sampled with PPO's
    # noise, 512 envs x 20 steps each, counted (neither succeeds within 20 steps, so the fit is kept); the warm start
    # switched PPO's adaptive learning rate on
    config = json.loads((run / "config.json").read_text())
    assert config["desired_kl"] == 0.01 and config["freeze_normalizer"] is True
    warm = results["expert_warm_start"]
    assert warm["rounds"] == 1 and warm["extra_env_steps"] == 4 * 512 * 20 and warm["fallback"] and not warm["fit_rejected"]
    assert warm["policies"]["missed_handle"]["rounds"][0]["executed"] == "expert-guided"
    summary = (run / "summary.md").read_text()
    assert "expert warm start" in summary and "| failure mode | train states | base alone | ReCoVLA |" in summary
    from experiments.summary import write_summary  # an ablation's summary names what it trained, not ReCoVLA

    write_summary({**results, "mask": "wrong"}, config, tmp_path / "wrong.md")
    assert "| base alone | residual, wrong mask |" in (tmp_path / "wrong.md").read_text()
    cell = results["modes"]["missed_handle"]
    assert set(results["modes"]) == {"missed_handle"} and cell["heldout_states"] == int(
        np.sum((labelled_bank.arrays["split"] == 1) & (labelled_bank.arrays["mode"] == 0)))
    assert cell["recovla"]["trials"] == cell["base"]["trials"] == cell["heldout_states"]
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["iteration"] for m in metrics] == [1, 2] and {m["policy"] for m in metrics} == {"missed_handle"}
    assert all(0.0 < m["learning_rate"] <= 1e-2 for m in metrics)
    for f in ("config.json", "descriptors.json", "diagnosis.json", "summary.md", "learning_curves.png",
              "policies/missed_handle.json", "base_policy"):
        assert (run / f).exists(), f
    assert any((run / "tensorboard").iterdir()) and sorted(p.name for p in (run / "checkpoints" / "missed_handle").iterdir()
                                                          if p.name.isdigit()) == ["1", "2"]

    record = baselines_main([f"--run={run}", "--method=finetune", "--nominal-episodes=2"])
    out = run / "baselines" / "finetune"
    assert (record["budget"]["budget_matches_run"]
            and record["modes"]["missed_handle"]["policy"]["trials"] == cell["heldout_states"])
    assert record["nominal"]["policy"]["trials"] == record["nominal"]["base"]["trials"] == 2
    ft_metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert ([m["iteration"] for m in ft_metrics] == [1, 2]
            and json.loads((out / "results.json").read_text())["method"] == "finetune")
    assert all("learning_rate" in m for m in ft_metrics)  # the run's adaptive learning rate, too
    # the baseline got the run's supervision: the same warm start, on the whole action
    assert record["label"].endswith(", expert warm start") and set(record["expert_warm_start"]["policies"]) == {"missed_handle"}

    # --actor-hidden: the run's residual actor has the widths asked for, recorded where export and evaluation read them;
    # a residual baseline trains the same network, the fine-tuned base keeps the base network
    from recovla_jax.export.run_reader import dense_shapes, read_residual_checkpoint
    from recovla_jax.policies.base_policy import bc_hidden

    assert config["actor_hidden"] == [32, 32]
    assert json.loads((run / "policies" / "missed_handle.json").read_text())["actor"]["hidden"] == [32, 32]
    widths = lambda ckpt: [out_size for _, out_size in dense_shapes(read_residual_checkpoint(ckpt).actor_params)][:-1]  # noqa: E731
    assert widths(run / "checkpoints" / "missed_handle") == [32, 32]
    assert widths(out / "checkpoints" / "missed_handle") == list(bc_hidden(drawer_base_policy.params["net"]))
    baselines_main([f"--run={run}", "--method=residual-full", "--nominal-episodes=0"])
    assert widths(run / "baselines" / "residual-full" / "checkpoints" / "missed_handle") == [32, 32]


def test_an_answer_appended_after_a_torn_cache_line_survives(tmp_path):
    """A write interrupted mid-line leaves no newline; the next answer must start its own line, or both are lost."""
    from recovla_jax.diagnosis.cache import ResponseCache

    path = tmp_path / "cache.jsonl"
    cache = ResponseCache(path)
    cache.put("a", {"raw_text": "{}"})
    with path.open("a") as f:
        f.write('{"key": "torn", "raw_te')  # the interrupted write
    cache.put("b", {"raw_text": "{}"})
    cache.put("c", {"raw_text": "{}"})
    again = ResponseCache(path)
    assert again.get("a") and again.get("b") and again.get("c") and again.get("torn") is None
    assert path.read_text().count("\n") == 4  # a, the torn fragment, b, c: one per line


def test_accuracy_with_oracle_fallbacks_leads_with_the_selector_s_own_answers(drawer_task):
    """An oracle fallback answers with the simulator's label, so counting it as the selector's makes a failing VLM
    look accurate: the report's headline is the selector's own accuracy, and the mixed one says what it mixes."""
    from recovla_jax.diagnosis.metrics import report_markdown

    task = drawer_task

    def result(mode: str, fallback: bool) -> DiagnosisResult:
        d = RecoveryDescriptor(task=task.name, failure_mode=mode, recovery_stage="reach", reward_mask={"success": 1.0},
                               source="oracle" if fallback else "gemini")
        return DiagnosisResult(descriptor=d, record=DiagnosisRecord(selector="gemini", fallback_used=fallback,
                                                                    fallback="oracle" if fallback else None))

    truth = ["missed_handle"] * 4
    results = [result("slipped_off", False), result("missed_handle", True), result("missed_handle", True),
               result("missed_handle", True)]
    report = score(task, results, truth, ["reach"] * 4)
    assert report["mode_accuracy"]["rate"] == 0.75 and report["selector_only_mode_accuracy"]["rate"] == 0.0
    assert report["oracle_fallbacks"] == 3
    lines = report_markdown("gemini", report).splitlines()
    assert lines[2].startswith("- **the selector's own answers**: mode 0.0%")
    assert "3 of them the oracle's privileged labels, correct by construction" in lines[3]
