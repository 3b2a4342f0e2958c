"""Robot-side runtime: exported ONNX policies under onnxruntime, failure monitor, recovery switching, safety.

Imports no JAX (onnxruntime, numpy, mujoco, pydantic, websockets, msgpack only), so it runs on a robot
computer next to the robot's own stack; `tests/test_runtime.py` proves it with JAX made unimportable.

    manifest = load_manifest(export_dir)                      # validated, sha256-checked
    base = OnnxBasePolicy(export_dir, manifest.base_policy)   # or OpenPIBasePolicy(OpenPIClient(host, port))
    runtime = RecoveryRuntime(manifest, base, PolicyLibrary(export_dir, manifest), DrawerRulesSelector())
    obs = robot.reset(); runtime.reset(grip=ROBOT_GRIP)   # the robot's current gripper command, -1 open .. +1 closed
    while not done:
        robot.apply_action(runtime.step(obs)); obs = robot.get_observation()

The names below load on first use, so the NumPy-only modules (`drawer_rules`, `gripper`, `rotations`),
which the JAX training code imports for their shared constants and rules, pull in nothing else.
"""

from importlib import import_module

_EXPORTS = {
    "ExportManifest": "manifest", "ManifestError": "manifest", "load_manifest": "manifest",
    "FailureMonitor": "monitor", "MonitorConfig": "monitor",
    "OnnxBasePolicy": "onnx_policy", "OnnxRecoveryPolicy": "onnx_policy", "PolicyLibrary": "onnx_policy",
    "BasePolicySource": "robots.base", "Observation": "robots.base", "Robot": "robots.base",
    "RecoveryRuntime": "runtime", "RuntimeEvent": "runtime",
    "SafetyConfig": "safety", "SafetyFilter": "safety", "Watchdog": "safety",
    "DrawerRulesSelector": "selectors", "OracleSelector": "selectors", "Selector": "selectors",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(import_module(f"{__name__}.{_EXPORTS[name]}"), name)
