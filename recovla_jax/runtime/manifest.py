"""The export manifest: the one contract between training-side export and the robot-side runtime.

Everything the runtime needs to run the exported ONNX models without the training code is here: task,
failure modes, observation layouts (names, order, units), action space and bounds, residual scale,
control rate, model files with their sha256 and I/O signatures, parity results, safety defaults.
Validation is strict (unknown keys, inconsistent sizes, wrong hashes are errors that say what is wrong),
so a robot never runs a model with a mismatched observation layout.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MANIFEST_FORMAT = 1
MANIFEST_NAME = "manifest.json"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ObsField(_Strict):
    """One slice of an observation vector."""

    name: str
    start: int = Field(ge=0)
    size: int = Field(ge=1)
    unit: str
    description: str


class ObservationSpec(_Strict):
    size: int = Field(ge=1)
    fields: list[ObsField]

    @model_validator(mode="after")
    def _contiguous(self) -> "ObservationSpec":
        pos = 0
        for f in self.fields:
            if f.start != pos:
                raise ValueError(f"observation field {f.name!r} starts at {f.start}, expected {pos} "
                                 "(fields must be contiguous, in order)")
            pos += f.size
        if pos != self.size:
            raise ValueError(f"observation fields cover {pos} floats but the observation size is {self.size}")
        return self

    def index(self, name: str) -> slice:
        for f in self.fields:
            if f.name == name:
                return slice(f.start, f.start + f.size)
        raise KeyError(f"no observation field {name!r}; fields: {[f.name for f in self.fields]}")


def _field_slice(observation: ObservationSpec, what: str, name: str) -> slice:
    """`observation.index(name)` inside a validator: a ValueError (which pydantic reports), not a KeyError."""
    try:
        return observation.index(name)
    except KeyError as e:
        raise ValueError(f"{what}: {e.args[0]}") from None


class ActionSpec(_Strict):
    size: int = Field(ge=1)
    names: list[str]
    low: float
    high: float
    meaning: str
    max_translation: float = Field(gt=0, description="metres per control step at |action| = 1")
    max_rotation: float = Field(gt=0, description="radians per control step at |action| = 1")

    @model_validator(mode="after")
    def _check(self) -> "ActionSpec":
        if len(self.names) != self.size:
            raise ValueError(f"action has size {self.size} but {len(self.names)} names")
        if not self.low < self.high:
            raise ValueError(f"action bounds must satisfy low < high, got [{self.low}, {self.high}]")
        return self


class ControlSpec(_Strict):
    ctrl_dt: float = Field(gt=0, description="seconds per control step")
    rate_hz: float = Field(gt=0)
    sim_substeps: int = Field(ge=1, description="physics steps per control step in training")
    episode_length: int = Field(ge=1, description="control steps per recovery episode in training")

    @model_validator(mode="after")
    def _rate(self) -> "ControlSpec":
        if abs(self.rate_hz * self.ctrl_dt - 1.0) > 1e-6:
            raise ValueError(f"rate_hz={self.rate_hz} does not match ctrl_dt={self.ctrl_dt}")
        return self


class TensorSpec(_Strict):
    name: str
    shape: list[int | str]
    dtype: Literal["float32"] = "float32"
    description: str = ""


class ParityResult(_Strict):
    """Max |ONNX - JAX| over each observation set, per output; the export refuses a row that differs by more
    than `tolerance` x that row's input scale: its largest |normalised input| as the network sees it (clipped
    where the network clips; raw |x| without statistics), clipped to [1, 10], plus twice the JAX reference's own
    float32 error against a float64 evaluation where that was measured (recovery policies; export/onnx_io.py)."""

    tolerance: float
    max_abs_error: dict[str, float]  # "<set>/<output>" -> error
    max_input_scale: dict[str, float] = {}  # set -> largest input scale (1 = the flat tolerance applied everywhere)
    float32_rounding: dict[str, float] = {}  # "<set>/<output>" -> max |float32 JAX - float64 formula| (empty: not measured)
    counts: dict[str, int]  # set -> number of observations checked
    passed: bool


class ModelFile(_Strict):
    file: str
    sha256: str
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    parity: ParityResult

    @field_validator("file")
    @classmethod
    def _relative(cls, v: str) -> str:
        if Path(v).is_absolute() or ".." in Path(v).parts:
            raise ValueError(f"model file {v!r} must be a path relative to the manifest's directory")
        return v

    @field_validator("sha256")
    @classmethod
    def _hex(cls, v: str) -> str:
        if not re.fullmatch(r"[0-9a-f]{64}", v):
            raise ValueError(f"sha256 must be 64 lowercase hex digits, got {v!r}")
        return v


class BasePolicyEntry(ModelFile):
    name: str
    formula: str


class RecoveryPolicyEntry(ModelFile):
    name: str
    modes: list[str] = Field(min_length=1)
    alpha: float = Field(gt=0, description="residual scale: residual output = alpha * tanh(actor(normalized obs))")
    hand_back: bool = Field(False, description="trained to act only while a failure persists: the runtime hands control "
                                               "back to the base once the selector has seen no failure for "
                                               "hand_back_delay more steps")
    hand_back_delay: int = Field(0, ge=0, description="steps a hand-back policy keeps control after the failure clears")
    recovery_stall_steps: int | None = Field(
        None, ge=1, description="re-diagnose this policy's recovery after N steps without task progress "
                                "(None: the runtime's monitor default); chosen on train states, not held-out ones")
    checkpoint_step: int
    descriptors: dict[str, dict]
    descriptor_features: dict[str, list[float]] = Field(
        description="mode -> [one-hot, reward weights] block of the residual observation")
    formula: str


class ProgressSpec(_Strict):
    """The scalar the failure monitor watches for task progress, and the value that means success."""

    field: str
    success_threshold: float
    unit: str
    description: str


class WorkspaceBox(_Strict):
    low: list[float] = Field(min_length=3, max_length=3)
    high: list[float] = Field(min_length=3, max_length=3)
    source: str

    @model_validator(mode="after")
    def _order(self) -> "WorkspaceBox":
        if any(lo >= hi for lo, hi in zip(self.low, self.high)):
            raise ValueError(f"workspace box low {self.low} must be below high {self.high} on every axis")
        return self


class SafetyDefaults(_Strict):
    workspace: WorkspaceBox
    workspace_field: str = Field(description="observation field holding the position the box bounds")
    max_residual_norm: float = Field(gt=0)


class SceneFile(_Strict):
    """The MJCF scene the policies were trained in (for simulated robots; a real robot ignores it)."""

    file: str
    sha256: str
    source: str


class ExportManifest(_Strict):
    format: Literal[1] = MANIFEST_FORMAT
    created_utc: str
    source: dict
    task: str
    instruction: str
    task_config: dict
    failure_modes: list[str]
    control: ControlSpec
    observation: ObservationSpec
    residual_observation: ObservationSpec
    action: ActionSpec
    progress: ProgressSpec
    safety: SafetyDefaults
    base_policy: BasePolicyEntry
    recovery_policies: list[RecoveryPolicyEntry]
    scene: SceneFile | None = None
    opset: int = Field(ge=7)
    versions: dict[str, str | None]

    @model_validator(mode="after")
    def _consistent(self) -> "ExportManifest":
        obs, res, act = self.observation.size, self.residual_observation.size, self.action.size
        _check_io(self.base_policy, "base policy", obs, act)
        _field_slice(self.observation, "progress.field", self.progress.field)
        workspace = _field_slice(self.observation, "safety.workspace_field", self.safety.workspace_field)
        if workspace.stop - workspace.start != 3:
            raise ValueError(f"safety.workspace_field {self.safety.workspace_field!r} must be a 3-float observation field")
        first = self.residual_observation.fields[0]
        if first.start != 0 or res < obs + act:
            raise ValueError(f"residual observation (size {res}) must start with the task observation ({obs}) "
                             f"and base action ({act})")
        names = set()
        for p in self.recovery_policies:
            if p.name in names:
                raise ValueError(f"recovery policy {p.name!r} is listed twice")
            names.add(p.name)
            _check_io(p, f"recovery policy {p.name!r}", res, act)
            for m in p.modes:
                if m not in self.failure_modes:
                    raise ValueError(f"recovery policy {p.name!r} serves unknown failure mode {m!r}; modes: {self.failure_modes}")
                feats = p.descriptor_features.get(m)
                if feats is None or len(feats) != res - obs - act:
                    raise ValueError(f"recovery policy {p.name!r}: descriptor_features[{m!r}] must have {res - obs - act} floats "
                                     f"(residual obs {res} - obs {obs} - action {act})")
        return self

    def policy_for(self, mode: str) -> RecoveryPolicyEntry | None:
        for p in self.recovery_policies:
            if mode in p.modes:
                return p
        return None


def _check_io(entry: ModelFile, what: str, in_size: int, out_size: int) -> None:
    if len(entry.inputs) != 1:
        raise ValueError(f"{what} must have exactly one input, got {[i.name for i in entry.inputs]}")
    shape = entry.inputs[0].shape
    if len(shape) != 2 or shape[-1] != in_size:
        raise ValueError(f"{what} input {entry.inputs[0].name!r} has shape {shape}, but the observation size is {in_size} "
                         f"(expected [batch, {in_size}])")
    for o in entry.outputs:
        if len(o.shape) != 2 or o.shape[-1] != out_size:
            raise ValueError(f"{what} output {o.name!r} has shape {o.shape}, expected [batch, {out_size}]")


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def save_manifest(manifest: ExportManifest, directory: Path) -> Path:
    """Write `directory/manifest.json` atomically (a reader never sees half a manifest)."""
    directory = Path(directory)
    tmp = directory / f".{MANIFEST_NAME}.tmp"
    tmp.write_text(json.dumps(manifest.model_dump(mode="json"), indent=2))
    os.replace(tmp, directory / MANIFEST_NAME)
    return directory / MANIFEST_NAME


def with_stall_windows(manifest: ExportManifest, windows: dict[str, int], source: dict) -> ExportManifest:
    """The manifest with each named recovery policy's `recovery_stall_steps` set, and where they came from under
    `source["runtime_tuning"]`; an unknown policy name is refused with the manifest's."""
    names = [p.name for p in manifest.recovery_policies]
    unknown = sorted(set(windows) - set(names))
    if unknown:
        raise ValueError(f"stall windows for unknown recovery policies {unknown}; the manifest has {names}")
    data = manifest.model_dump(mode="json")
    for p in data["recovery_policies"]:
        if p["name"] in windows:
            p["recovery_stall_steps"] = windows[p["name"]]
    data["source"] = {**manifest.source, "runtime_tuning": source}
    return ExportManifest.model_validate(data)  # validated again: a window below 1 is refused here


class ManifestError(ValueError):
    """A manifest that does not match the files beside it."""


def load_manifest(directory: Path, verify_files: bool = True) -> ExportManifest:
    """Read and validate `directory/manifest.json`; with `verify_files`, check every model's sha256."""
    directory = Path(directory)
    path = directory / MANIFEST_NAME
    if not path.exists():
        raise FileNotFoundError(f"no {MANIFEST_NAME} in {directory}: run `python -m experiments.export --run=RUN_DIR` first")
    try:
        manifest = ExportManifest.model_validate(json.loads(path.read_text()))
    except ValueError as e:  # pydantic's ValidationError and json's JSONDecodeError, named with the file
        raise ManifestError(f"{path}: {e}") from e
    if verify_files:
        for entry in [manifest.base_policy, *manifest.recovery_policies, *([manifest.scene] if manifest.scene else [])]:
            f = directory / entry.file
            if not f.exists():
                raise ManifestError(f"{path}: model file {entry.file} is missing")
            digest = sha256_file(f)
            if digest != entry.sha256:
                raise ManifestError(f"{path}: sha256 of {entry.file} is {digest}, manifest says {entry.sha256} "
                                    "(file changed after export)")
    return manifest
