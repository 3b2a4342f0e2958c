"""onnxruntime wrappers for the exported base and recovery policies (no JAX).

Sessions run single-threaded on CPU by default: one observation per control step is far too small
for intra-op threading to pay, and a robot computer has other work on its cores.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

from recovla_jax.runtime.manifest import BasePolicyEntry, ExportManifest, RecoveryPolicyEntry
from recovla_jax.runtime.robots.base import Observation


def make_session(path: Path, threads: int = 1) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


class OnnxModel:
    """One ONNX model with a single float32 input; returns its outputs by name."""

    def __init__(self, path: Path, threads: int = 1):
        self.path = Path(path)
        self.session = make_session(self.path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.input_size = self.session.get_inputs()[0].shape[-1]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: np.ndarray) -> dict[str, np.ndarray]:
        x = np.asarray(x, np.float32)
        single = x.ndim == 1
        if single:
            x = x[None]
        if x.shape[-1] != self.input_size:
            raise ValueError(f"{self.path.name}: input has {x.shape[-1]} floats, the model takes {self.input_size}")
        outs = self.session.run(None, {self.input_name: x})
        return {n: (o[0] if single else o) for n, o in zip(self.output_names, outs)}


class OnnxBasePolicy:
    """The frozen base policy from its ONNX export: observation -> action in the manifest's bounds."""

    def __init__(self, directory: Path, entry: BasePolicyEntry, threads: int = 1):
        self.entry = entry
        self.model = OnnxModel(Path(directory) / entry.file, threads)

    def reset(self) -> None:
        pass

    def act(self, obs: Observation | np.ndarray) -> np.ndarray:
        state = obs.state if isinstance(obs, Observation) else obs
        return self.model(state)["action"].astype(np.float64)


class OnnxRecoveryPolicy:
    """A residual recovery policy: (observation, base action, mode) -> alpha-scaled residual."""

    def __init__(self, directory: Path, entry: RecoveryPolicyEntry, threads: int = 1):
        self.entry = entry
        self.model = OnnxModel(Path(directory) / entry.file, threads)
        self.features = {m: np.asarray(f, np.float32) for m, f in entry.descriptor_features.items()}

    def residual_obs(self, state: np.ndarray, base_action: np.ndarray, mode: str) -> np.ndarray:
        """[task obs, base action, mode one-hot, reward weights]: the layout the policy was trained on."""
        return np.concatenate([np.asarray(state, np.float32), np.asarray(base_action, np.float32), self.features[mode]])

    def residual(self, state: np.ndarray, base_action: np.ndarray, mode: str) -> np.ndarray:
        return self.model(self.residual_obs(state, base_action, mode))["residual"].astype(np.float64)


class PolicyLibrary:
    """Failure mode -> recovery policy, from a manifest (one ONNX session per exported policy)."""

    def __init__(self, directory: Path, manifest: ExportManifest, threads: int = 1):
        self.manifest = manifest
        self.policies = {p.name: OnnxRecoveryPolicy(directory, p, threads) for p in manifest.recovery_policies}
        self.by_mode: dict[str, OnnxRecoveryPolicy] = {}
        for p in manifest.recovery_policies:
            for m in p.modes:
                self.by_mode.setdefault(m, self.policies[p.name])

    def __contains__(self, mode: object) -> bool:
        return mode in self.by_mode

    def __getitem__(self, mode: str) -> OnnxRecoveryPolicy:
        return self.by_mode[mode]

    @property
    def modes(self) -> list[str]:
        return list(self.by_mode)
