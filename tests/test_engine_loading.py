"""Loading a real model the first time: the hub check, download progress, and every local path
MODEL can name (single-file checkpoints included), each with a message that says what to do.

No test reaches the internet. Where the hub must answer, a small HTTP server on 127.0.0.1 stands
in for it (HF_ENDPOINT points there, or HTTP_PROXY does): only the hub is mocked, the code that
asks it is huggingface_hub's own. Checkpoint files are real files, read by diffusers.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import select
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from pipeline.engine import Engine, quiet_library_logs
from pipeline.errors import ModelLoadError

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
DOWNLOAD = b"\0" * 3_000_000  # big enough for a progress bar to draw a few times

# Keys that make diffusers read a file as a Stable Diffusion 1.x checkpoint (the original
# CompVis layout that single-file downloads use); the tensors are tiny.
SD1_LAYOUT = {
    "model.diffusion_model.input_blocks.0.0.weight": torch.zeros(4, 4, 3, 3),
    "model.diffusion_model.output_blocks.11.0.skip_connection.weight": torch.zeros(4, 4, 1, 1),
    "first_stage_model.decoder.conv_out.weight": torch.zeros(3, 4, 3, 3),
    "cond_stage_model.transformer.text_model.final_layer_norm.weight": torch.zeros(4),
}
# Only an SDXL refiner has this one.
XL_REFINER_KEY = "conditioner.embedders.0.model.transformer.resblocks.9.mlp.c_proj.bias"


# -- a stand-in for the hub ------------------------------------------------------------------


class FakeHub(BaseHTTPRequestHandler):
    """Answers the few hub requests these tests make, and records every request line."""

    protocol_version = "HTTP/1.1"
    seen: list[str]

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        self._answer()

    def do_HEAD(self) -> None:
        self._answer()

    def _answer(self) -> None:
        self.seen.append(f"{self.command} {self.path}")
        path = self.path.split("://", 1)[-1]  # through a proxy, the path is the whole URL
        path = path[path.index("/") :] if "://" in self.path else path
        if path.startswith("/api/models/easel-test/present"):
            body = json.dumps({"id": "easel-test/present", "sha": COMMIT}).encode()
            return self._send(200, body, {"Content-Type": "application/json"})
        if path.startswith("/api/models/easel-test/gated"):
            return self._send(403, b"{}", {"X-Error-Code": "GatedRepo"})
        if path.startswith("/easel-test/present/resolve/"):
            headers = {"X-Repo-Commit": COMMIT, "ETag": '"download-etag"'}
            return self._send(200, DOWNLOAD, headers)
        return self._send(
            404, b'{"error": "Repository not found"}', {"X-Error-Code": "RepoNotFound"}
        )

    def _send(self, status: int, body: bytes, headers: dict[str, str]) -> None:
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)


@pytest.fixture
def fake_hub() -> Iterator[tuple[str, list[str]]]:
    """A hub on 127.0.0.1: its base URL and the request lines it received."""
    seen: list[str] = []
    handler = type("Hub", (FakeHub,), {"seen": seen})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hub_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """A child environment that may reach only what ``extra`` points at."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.lower().endswith("_proxy") and not k.startswith(("HF_", "HUGGINGFACE"))
    }
    env.update(HF_HOME=str(tmp_path / "hf-home"), HF_HUB_OFFLINE="0", PYTHONPATH=str(ROOT))
    env.update(extra)
    return env


def run_python(code: str, env: dict[str, str]) -> str:
    """huggingface_hub reads HF_ENDPOINT and the proxies when imported: ask it in a child."""
    done = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


CHECK = """
from pipeline.engine import _hub_problem
for repo in {repos!r}:
    print(repo, "->", _hub_problem(repo, timeout=5))
"""


# -- the hub check ---------------------------------------------------------------------------


def test_hub_check_asks_the_hub_at_hf_endpoint(tmp_path, fake_hub):
    url, seen = fake_hub
    repos = ["easel-test/present", "easel-test/absent", "easel-test/gated"]
    out = run_python(CHECK.format(repos=repos), hub_env(tmp_path, HF_ENDPOINT=url))
    lines = out.splitlines()
    assert lines[0] == "easel-test/present -> None"
    assert lines[1] == (
        f"easel-test/absent -> {url} has no model easel-test/absent (a private one needs HF_TOKEN)"
    )
    assert lines[2].startswith(f"easel-test/gated -> it is gated on {url}: accept its terms")
    assert {f"GET /api/models/{r}" for r in repos} <= {line.split("?")[0] for line in seen}


def test_hub_check_goes_through_the_proxy(tmp_path, fake_hub):
    # The hub's name can't even be resolved here: only a proxy that is really used can answer.
    url, seen = fake_hub
    env = hub_env(tmp_path, HF_ENDPOINT="http://hub.easel-test.invalid", HTTP_PROXY=url)
    out = run_python(CHECK.format(repos=["easel-test/present"]), env)
    assert out.splitlines() == ["easel-test/present -> None"]
    assert any(
        line.startswith("GET http://hub.easel-test.invalid/api/models/easel-test/present")
        for line in seen
    )


def test_an_unreachable_hub_endpoint_is_named_with_what_to_check(tmp_path):
    endpoint = f"http://127.0.0.1:{closed_port()}"
    code = """
from pipeline.engine import Engine
from pipeline.errors import ModelLoadError
try:
    Engine.load("easel-test/not-cached", device="cpu")
except ModelLoadError as exc:
    print(exc)
"""
    out = run_python(code, hub_env(tmp_path, HF_ENDPOINT=endpoint)).strip()
    assert out == (
        "The model easel-test/not-cached is not in the local Hugging Face cache and the hub at "
        f"{endpoint} can't be reached ([Errno 111] Connection refused; check the connection, "
        "HF_ENDPOINT and HTTPS_PROXY). Download it where the hub can be reached, or set MODEL to "
        "a local diffusers folder or checkpoint file, or to the built-in offline model "
        "tiny:shapes."
    )


def test_offline_mode_fails_fast_and_suggests_a_local_model(model_cache):
    # conftest sets HF_HUB_OFFLINE=1: huggingface_hub refuses every request.
    started = time.perf_counter()
    with pytest.raises(ModelLoadError) as caught:
        Engine.load("easel-test/not-cached", device="cpu", cache_dir=model_cache)
    assert time.perf_counter() - started < 30
    message = str(caught.value)
    assert "not in the local Hugging Face cache and HF_HUB_OFFLINE is set" in message
    assert "local diffusers folder or checkpoint file" in message and "tiny:shapes" in message


# -- download progress -----------------------------------------------------------------------

DOWNLOAD_CODE = """
from pipeline.engine import quiet_library_logs
quiet_library_logs()
from huggingface_hub import hf_hub_download
print(hf_hub_download("easel-test/present", "unet/weights.bin"))
"""


def test_download_progress_shows_on_a_terminal(tmp_path, fake_hub):
    url, _ = fake_hub
    # On a terminal (a pseudo-terminal as stderr): a real download from the stand-in hub.
    leader, follower = pty.openpty()
    # A fresh pseudo-terminal is 0 columns wide, and tqdm draws nothing in 0 columns.
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    env = hub_env(tmp_path, HF_ENDPOINT=url, HF_HUB_DISABLE_XET="1")
    child = subprocess.Popen(
        [sys.executable, "-c", DOWNLOAD_CODE], env=env, stdout=subprocess.PIPE, stderr=follower
    )
    os.close(follower)
    terminal = b""
    while True:
        ready, _, _ = select.select([leader], [], [], 60)
        if not ready:
            break
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the child closed the terminal
            break
        if not chunk:
            break
        terminal += chunk
    out, _ = child.communicate(timeout=60)
    os.close(leader)
    assert child.returncode == 0, terminal.decode(errors="replace")
    assert Path(out.decode().strip()).stat().st_size == len(DOWNLOAD)
    text = terminal.decode(errors="replace")
    assert "weights.bin" in text and "100%" in text and "3.00M" in text, text


def test_library_chatter_stays_off_while_download_bars_are_on():
    from diffusers.utils import logging as diffusers_logging
    from huggingface_hub.utils import are_progress_bars_disabled
    from transformers.utils import logging as transformers_logging

    was_disabled = are_progress_bars_disabled()
    try:
        quiet_library_logs(download_progress=True)
        assert not are_progress_bars_disabled()
        assert not diffusers_logging.is_progress_bar_enabled()
        assert diffusers_logging.get_verbosity() == diffusers_logging.ERROR
        assert transformers_logging.get_verbosity() == transformers_logging.ERROR
        quiet_library_logs()  # stderr is not a terminal under pytest: a pipe gets no bars
        assert are_progress_bars_disabled()
    finally:
        from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

        (disable_progress_bars if was_disabled else enable_progress_bars)()


# -- local paths: single-file checkpoints, folders, files ------------------------------------


def load(model: str | Path, model_cache: Path) -> str:
    with pytest.raises(ModelLoadError) as caught:
        Engine.load(str(model), device="cpu", cache_dir=model_cache)
    message = str(caught.value)
    assert "Traceback" not in message and "\n" not in message
    return message


@pytest.mark.parametrize("suffix", [".safetensors", ".ckpt"])
def test_a_single_file_sd_checkpoint_offline_says_exactly_what_to_do(tmp_path, model_cache, suffix):
    path = tmp_path / f"dreamy-v1{suffix}"
    if suffix == ".safetensors":
        save_file(SD1_LAYOUT, path)
    else:
        torch.save({"state_dict": SD1_LAYOUT}, path)
    assert load(path, model_cache) == (
        f"{path} is a single-file Stable Diffusion 1.x checkpoint. Loading it needs the "
        "configuration of Stable Diffusion 1.x (a few small files from the hub repo "
        "stable-diffusion-v1-5/stable-diffusion-v1-5), which is not in the local Hugging Face "
        "cache, and HF_HUB_OFFLINE is set, so nothing is downloaded (unset it to download). "
        "Run Easel once where the hub can be reached (the files are cached for later runs), or "
        "set MODEL to a diffusers folder (one with model_index.json)."
    )


def test_the_tiny_pipelines_weights_in_one_file_are_not_a_whole_checkpoint(
    tmp_path, model_cache, sd_engine
):
    # The real tiny SD pipeline's weights, saved as one file in diffusers' own layout.
    weights = {
        f"{part}.{name}": tensor.contiguous()
        for part in ("unet", "vae", "text_encoder")
        for name, tensor in getattr(sd_engine.pipe, part).state_dict().items()
    }
    path = tmp_path / "tiny-sd.safetensors"
    save_file(weights, path)
    message = load(path, model_cache)
    assert message.startswith(
        f"{path} holds no Stable Diffusion UNet (none of its {len(weights)} tensors is named "
        "model.diffusion_model.*), so it is not a whole Stable Diffusion checkpoint. MODEL takes"
    )


@pytest.mark.parametrize(
    ("tensors", "message"),
    [
        ({"lora_unet_down_blocks_0_attn.lora_down.weight": torch.zeros(2, 2)}, "is a LoRA"),
        ({"string_to_param.*": torch.zeros(1, 4)}, "is a textual-inversion embedding"),
        (
            {"encoder.conv_in.weight": torch.zeros(1), "decoder.conv_out.weight": torch.zeros(1)},
            "is a VAE on its own",
        ),
        ({XL_REFINER_KEY: torch.zeros(1)}, "is not a text-to-image checkpoint Easel can draw with"),
    ],
)
def test_parts_and_other_kinds_of_checkpoints_are_named(tmp_path, model_cache, tensors, message):
    path = tmp_path / "download.safetensors"
    save_file(tensors, path)
    assert load(path, model_cache).startswith(f"{path} {message}")


def test_a_broken_checkpoint_file_is_reported_as_unreadable(tmp_path, model_cache):
    path = tmp_path / "half-downloaded.safetensors"
    save_file(SD1_LAYOUT, path)
    path.write_bytes(path.read_bytes()[:100])
    message = load(path, model_cache)
    assert message.startswith(f"{path} can't be read as a checkpoint (")
    assert message.endswith("); is the file complete?")


def test_a_missing_checkpoint_file_says_where_it_was_looked_for(tmp_path, model_cache, monkeypatch):
    monkeypatch.chdir(tmp_path)
    save_file(SD1_LAYOUT, tmp_path / "dreamy-v1.safetensors")
    assert load("dreamy-v2.safetensors", model_cache) == (
        "The checkpoint file dreamy-v2.safetensors does not exist (looked for "
        f"{tmp_path / 'dreamy-v2.safetensors'}; {tmp_path} holds dreamy-v1.safetensors)."
    )
    assert load("./models/sd", model_cache) == (
        f"The model folder ./models/sd does not exist (looked for {tmp_path / 'models' / 'sd'})."
    )


def test_folders_without_model_index_say_what_to_point_at(tmp_path, model_cache):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert load(empty, model_cache).startswith(
        f"The folder {empty} has no model_index.json: it is not a diffusers pipeline. MODEL takes"
    )

    downloads = tmp_path / "downloads"
    downloads.mkdir()
    save_file(SD1_LAYOUT, downloads / "dreamy-v1.safetensors")
    assert load(downloads, model_cache).endswith(
        "It holds the checkpoint file(s) dreamy-v1.safetensors: set MODEL to the file itself, "
        f"MODEL={downloads / 'dreamy-v1.safetensors'}."
    )

    # The hub cache's layout: models--org--name/snapshots/<commit>/model_index.json
    repo = tmp_path / "models--org--name"
    snapshot = repo / "snapshots" / COMMIT
    snapshot.mkdir(parents=True)
    (snapshot / "model_index.json").write_text("{}")
    assert load(repo, model_cache).endswith(
        f"A pipeline is in {snapshot}: set MODEL to that folder."
    )

    unet = tmp_path / "pipe" / "unet"
    unet.mkdir(parents=True)
    (unet / "config.json").write_text("{}")
    save_file({"w": torch.zeros(1)}, unet / "diffusion_pytorch_model.safetensors")
    assert load(unet, model_cache).endswith(
        "It holds one part of a pipeline (config.json and its weights): set MODEL to the folder "
        "above it, the one with model_index.json."
    )


def test_files_that_are_not_models_are_named(tmp_path, model_cache):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    assert load(notes, model_cache).startswith(f"The file {notes} is not a model. MODEL takes")
    index = tmp_path / "model_index.json"
    index.write_text("{}")
    assert load(index, model_cache) == (
        f"{index} is the index of a diffusers pipeline: set MODEL to its folder, {tmp_path}."
    )
    assert load("not a hub id", model_cache).startswith(
        "MODEL=not a hub id is not a folder or file here, and not a hub id ("
    )
