"""`sgvla serve`: a trained model behind openpi's websocket policy protocol.

A client (the released `openpi-client`'s `WebsocketClientPolicy`, or `sgvla eval --policy-server`)
connects, receives the server's metadata, then sends one observation per query and receives the
actions to execute. Messages are msgpack with numpy arrays (`sgvla.eval.wire`).

Request: the model's views by name (`head_rgb` uint8 (H, W, 3), `head_depth` millimetres (H, W) or
(H, W, 1), ...), `prompt` (the instruction), optional `subtask` (for `--mode auto`), optional
`history` (earlier observations, oldest first, for models with history frames) and `mode`.
Reply: `actions` float32 (K, 13), the ones to execute before the next query (K = 1 for single-step
tokens), `chunk` (everything predicted), `mode`. A request the server cannot answer (missing view,
wrong shape or dtype, bad prompt) gets a text frame `error: ...` (openpi's client raises it as a
RuntimeError) and the connection stays open: the next request is served as usual.
"""

from __future__ import annotations

import threading
from typing import Any

import numpy as np

from sgvla.errors import SgvlaError
from sgvla.eval.wire import pack, unpack
from sgvla.vocab import view_kind

DEFAULT_PORT = 8000


def metadata(model, name: str) -> dict[str, Any]:
    """What a client needs to know before its first query (sent on every new connection)."""
    c = model.config
    return {"server": "sgvla", "model": name, "views": list(c.views), "history": int(c.history),
            "action_dim": int(c.action_dim),
            "modes": ["tokens", "flow", "auto"] if model.expert is not None else ["tokens"]}


def check_request(request: Any, views: list[str]) -> None:
    """One error line for what a client got wrong (before the model sees it)."""
    if not isinstance(request, dict):
        raise SgvlaError(f"a request must be a map of view names, 'prompt', ... (got {type(request).__name__})")
    if not isinstance(request.get("prompt"), str) or not request["prompt"].strip():
        raise SgvlaError("the request needs 'prompt': the instruction, a non-empty string")
    frames = [request, *(request.get("history") or [])]
    for frame in frames:
        missing = [v for v in views if v not in frame]
        if missing:
            raise SgvlaError(f"observation lacks view(s) {missing}: this model reads {views}")
        for v in views:
            a = frame[v]
            if not isinstance(a, np.ndarray):
                raise SgvlaError(f"{v!r} must be a numpy array (got {type(a).__name__})")
            if view_kind(v) == "rgb" and a.dtype != np.uint8:
                raise SgvlaError(f"{v!r} must be uint8 RGB (got {a.dtype})")
            if view_kind(v) == "depth" and a.dtype.kind not in "uif":
                raise SgvlaError(f"{v!r} must be depth in millimetres, integer or float (got {a.dtype})")


class PolicyServer:
    """One model, served to any number of connections (queries run one at a time)."""

    def __init__(self, model, processor, name: str, mode: str = "auto"):
        self.model, self.processor, self.name, self.mode = model, processor, name, mode
        self.lock = threading.Lock()
        self.meta = metadata(model, name)

    def infer(self, request: dict) -> dict:
        check_request(request, self.meta["views"])
        with self.lock:
            out = self.model.predict_action(request, request["prompt"], subtask=request.get("subtask"),
                                            mode=request.get("mode") or self.mode, processor=self.processor)
        return {"actions": np.asarray(out.execute, dtype=np.float32), "chunk": np.asarray(out.chunk, np.float32),
                "mode": out.mode}

    def handle(self, connection) -> None:
        """One client: metadata first, then query -> reply until it disconnects."""
        from websockets.exceptions import ConnectionClosed

        connection.send(pack(self.meta))
        while True:
            try:
                message = connection.recv()
            except ConnectionClosed:
                return
            try:
                if isinstance(message, str):
                    raise SgvlaError("send msgpack bytes (openpi's msgpack-numpy), not text")
                reply: bytes | str = pack(self.infer(unpack(message)))
            except SgvlaError as e:
                reply = f"error: {e}"
            except Exception as e:  # a bad request must not stop the server for everyone else
                reply = f"error: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
            try:
                connection.send(reply)
            except ConnectionClosed:
                return


def serve(model_spec: str, host: str = "127.0.0.1", port: int = DEFAULT_PORT, mode: str = "auto",
          device: str = "cpu", ready=None) -> None:
    """Load the model and serve it until interrupted (`ready(server)` is called once it listens)."""
    from websockets.sync.server import serve as ws_serve

    from sgvla.eval.policies import load_policy_model

    model, processor = load_policy_model(model_spec)
    policy = PolicyServer(model.to(device), processor, str(model_spec), mode)
    try:
        server = ws_serve(policy.handle, host, port, compression=None, max_size=None)
    except OSError as e:
        raise SgvlaError(f"cannot listen on {host}:{port} ({e.strerror or e}): choose another --port") from None
    with server:
        print(f"serving {model_spec} on ws://{host}:{port} (openpi websocket protocol; Ctrl-C stops)", flush=True)
        if ready is not None:
            ready(server)
        try:
            server.serve_forever()
        except KeyboardInterrupt:  # Ctrl-C or SIGTERM: the normal way to stop a server
            print("policy server stopped", flush=True)
