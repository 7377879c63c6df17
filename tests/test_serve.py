"""`sgvla serve` and `sgvla eval --policy-server`: openpi's websocket protocol, driven by the
released `openpi-client` (installed by scripts/setup.sh) against a real server process."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from sgvla.eval.wire import pack, unpack
from sgvla.model import SGVLAConfig, SGVLAForActionPrediction, SGVLAProcessor, load_policy, save_policy

STATS = {"mean": [0.0] * 13, "std": [1.0] * 13, "min": [-3.0] * 13, "max": [3.0] * 13,
         "q01": [-1.0] * 13, "q99": [1.0] * 13}
VIEWS = ["head_rgb", "hand_rgb", "head_depth", "hand_depth"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("serve") / "model"
    torch.manual_seed(0)
    cfg = SGVLAConfig.from_preset("tiny", views=VIEWS, use_flow_expert=False, action_stats=STATS,
                                  text_config={"initializer_range": 0.2})
    save_policy(SGVLAForActionPrediction(cfg), SGVLAProcessor.from_config(cfg), path)
    return path


@pytest.fixture(scope="module")
def server(model_dir):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "sgvla.cli", "serve", str(model_dir), "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if "serving" in line or proc.poll() is not None:
            break
    assert proc.poll() is None, proc.stdout.read()
    yield f"ws://127.0.0.1:{port}", port
    proc.terminate()
    out = proc.communicate(timeout=60)[0]
    assert proc.returncode in (0, 130) and "Traceback" not in out, out


def observation(seed: int = 0) -> dict:
    g = np.random.default_rng(seed)
    return {"head_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "hand_rgb": g.integers(0, 256, (128, 128, 3), dtype=np.uint8),
            "head_depth": g.integers(0, 4000, (128, 128), dtype=np.uint16),
            "hand_depth": g.integers(0, 4000, (128, 128, 1), dtype=np.uint16)}


def test_wire_format_is_openpis_both_ways():
    from openpi_client import msgpack_numpy

    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.ones((2, 2), np.uint16),
              "s": np.float64(2.5), "text": "close the drawer", "n": [np.int8(-3), 4]}
    for packed in (pack(arrays), msgpack_numpy.packb(arrays)):
        for back in (unpack(packed), msgpack_numpy.unpackb(packed)):
            assert np.array_equal(back["a"], arrays["a"]) and back["a"].dtype == np.float32
            assert back["b"].dtype == np.uint16 and back["s"] == 2.5 and back["text"] == arrays["text"]
    with pytest.raises(TypeError):
        pack({"x": np.array([object()])})


def test_openpi_client_gets_the_models_actions_and_bad_requests_get_errors(server, model_dir):
    from openpi_client.websocket_client_policy import WebsocketClientPolicy

    _, port = server
    client = WebsocketClientPolicy("127.0.0.1", port)
    meta = client.get_server_metadata()
    assert meta["views"] == VIEWS and meta["action_dim"] == 13 and meta["history"] == 0
    obs = {**observation(1), "prompt": "close the drawer", "subtask": "close"}
    reply = client.infer(obs)
    local, processor = load_policy(model_dir)
    want = local.eval().predict_action(observation(1), "close the drawer", subtask="close", mode="tokens",
                                       processor=processor)
    assert reply["actions"].shape == (1, 13) and reply["mode"] == "tokens"
    np.testing.assert_allclose(reply["actions"], want.execute, rtol=1e-5, atol=1e-6)
    bad = [({k: v for k, v in obs.items() if k != "hand_rgb"}, "lacks view"),
           ({**obs, "head_rgb": obs["head_rgb"].astype(np.float32)}, "must be uint8"),
           ({**obs, "head_depth": np.zeros((128, 128, 2), np.uint16)}, "has shape"),
           ({**obs, "prompt": ""}, "prompt"),
           ({**obs, "hand_depth": np.array(["x"] * 4)}, "head_depth|hand_depth")]
    for request, words in bad:
        with pytest.raises(RuntimeError, match=words):
            client.infer(request)
        np.testing.assert_allclose(client.infer(obs)["actions"], reply["actions"])  # still serving


@pytest.mark.slow
def test_eval_against_a_served_model(server, tmp_path, ray_cluster):
    from sgvla.eval.runner import run_eval

    url, _ = server
    res = run_eval(url, "mini_kitchen", "close", episodes=1, out=tmp_path / "ev", workers=1, max_steps=4,
                   split="dev")
    assert res["model"] == url and len(res["episodes"]) == 1 and res["episodes"][0]["steps"] == 4
    assert (tmp_path / "ev" / "results.json").is_file()
