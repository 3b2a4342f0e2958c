"""openpi's policy-serving protocol, spoken directly (openpi-client needs numpy<2, which JAX 0.10 excludes).

Wire format (openpi `msgpack_numpy` + `websocket_client_policy` / `websocket_policy_server`): binary
websocket frames of msgpack; numpy arrays travel as {b"__ndarray__": True, b"data": bytes, b"dtype": str,
b"shape": tuple} (scalars as {b"__npgeneric__": True, ...}). On connect the server sends its metadata;
then each client frame is an observation dict and each reply is {"actions": (horizon, dim), ...}. A text
frame from the server is an error traceback.

`OpenPIBasePolicy` is a `BasePolicySource` (the frozen base served as a VLA would be) that executes each
returned action chunk open-loop for `replan_every` steps; `serve_policy` is a small server for tests and
for serving an ONNX base to a robot.
"""

from __future__ import annotations

import functools
import logging
import threading
import traceback
from typing import Any, Callable

import msgpack
import numpy as np
from websockets.sync.client import connect
from websockets.sync.server import Server, serve

from recovla_jax.runtime.robots.base import Observation

logger = logging.getLogger("recovla.openpi")


def _pack_array(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind in ("V", "O", "c"):
        raise ValueError(f"unsupported dtype for msgpack-numpy: {obj.dtype}")
    if isinstance(obj, np.ndarray):
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": obj.shape}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    return obj


def _unpack_array(obj: dict) -> Any:
    if b"__ndarray__" in obj:
        return np.ndarray(buffer=obj[b"data"], dtype=np.dtype(obj[b"dtype"]), shape=obj[b"shape"])
    if b"__npgeneric__" in obj:
        return np.dtype(obj[b"dtype"]).type(obj[b"data"])
    return obj


packb = functools.partial(msgpack.packb, default=_pack_array)
unpackb = functools.partial(msgpack.unpackb, object_hook=_unpack_array)


class OpenPIClient:
    """Synchronous openpi websocket client: `infer(obs_dict) -> reply dict`."""

    def __init__(self, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None, open_timeout: float = 10.0):
        headers = {"Authorization": f"Api-Key {api_key}"} if api_key else None
        self.uri = f"ws://{host}:{port}"
        self.ws = connect(self.uri, compression=None, max_size=None, additional_headers=headers, open_timeout=open_timeout)
        self.metadata = unpackb(self.ws.recv())

    def infer(self, obs: dict) -> dict:
        self.ws.send(packb(obs))
        reply = self.ws.recv()
        if isinstance(reply, str):
            raise RuntimeError(f"error in the openpi inference server:\n{reply}")
        return unpackb(reply)

    def close(self) -> None:
        self.ws.close()


class OpenPIBasePolicy:
    """Base actions from a policy served over openpi's protocol, executing action chunks open-loop."""

    def __init__(self, client: OpenPIClient, prompt: str = "", state_key: str = "observation/state",
                 image_keys: dict[str, str] | None = None, replan_every: int | None = None, action_dim: int = 7):
        self.client = client
        self.prompt = prompt
        self.state_key = state_key
        self.image_keys = image_keys or {}
        self.replan_every = replan_every
        self.action_dim = action_dim
        self._chunk: list[np.ndarray] = []

    def reset(self) -> None:
        self._chunk = []

    def request(self, obs: Observation) -> dict:
        """The observation dict sent to the server (openpi example keys; images only if mapped)."""
        out: dict[str, Any] = {self.state_key: np.asarray(obs.state, np.float32), "prompt": self.prompt}
        for cam, key in self.image_keys.items():
            if cam in obs.images:
                out[key] = obs.images[cam]
        return out

    def act(self, obs: Observation) -> np.ndarray:
        if not self._chunk:
            actions = np.asarray(self.client.infer(self.request(obs))["actions"], np.float64)
            if actions.ndim == 1:
                actions = actions[None]
            if actions.shape[-1] < self.action_dim:
                raise ValueError(f"server returned actions of shape {actions.shape}, expected (horizon, >= {self.action_dim})")
            n = len(actions) if self.replan_every is None else min(self.replan_every, len(actions))
            self._chunk = [a[: self.action_dim] for a in actions[:n]]
        return self._chunk.pop(0)


def serve_policy(infer: Callable[[dict], dict], host: str = "127.0.0.1", port: int = 0,
                 metadata: dict | None = None) -> tuple[Server, threading.Thread]:
    """Serve `infer(obs) -> {"actions": ...}` with openpi's protocol in a background thread.

    Returns (server, thread); `server.socket.getsockname()[1]` is the port; stop with `server.shutdown()`.
    """

    def handler(ws) -> None:
        ws.send(packb(metadata or {}))
        while True:
            try:
                message = ws.recv()
            except Exception:  # client closed the connection
                return
            try:
                reply = infer(unpackb(message))
            except Exception:
                ws.send(traceback.format_exc())
                ws.close(1011, "internal error")
                return
            ws.send(packb(reply))

    server = serve(handler, host, port, compression=None, max_size=None)
    thread = threading.Thread(target=server.serve_forever, name="openpi-server", daemon=True)
    thread.start()
    return server, thread
