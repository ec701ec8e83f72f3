"""Shared fixtures: offline environment, tiny models, composed Hydra configs, a real redis-server."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
os.environ.setdefault("PROJECT_ROOT", str(ROOT))
os.environ["HF_HUB_OFFLINE"] = "1"  # tests never reach the hub
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SHARED_DATA = ROOT.parent / "shared" / "data"
MODELS_DIR = Path(os.environ.get("GFN_MODELS_DIR", ROOT / "models"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not (SHARED_DATA / "SOURCES.md").is_file():
        pytest.skip(f"real edit data not present at {SHARED_DATA} (it sits beside checkouts of this project, not on users' machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS_DIR


@pytest.fixture(scope="session")
def tiny_gpt2(models_dir):
    from gflownet.core.modeling import load_causal_lm, load_tokenizer

    return load_causal_lm("packaged:tiny-gpt2", models_dir), load_tokenizer("packaged:tiny-gpt2", models_dir)


def compose(overrides: list[str] | None = None, output_dir: Path | None = None, config_name: str = "train"):
    """Compose configs/<config_name>.yaml like `python train.py OVERRIDES` would (``runner.compose_config``)."""
    from gflownet.runner import compose_config

    return compose_config(overrides, output_dir, config_name)


def trajectories(tok, questions, term: int = 30, lead: str = " "):
    """(B, T+1) ids of ``questions`` (each after ``lead``, then the termination id ``term``, then padding)
    and (B,) lengths."""
    import torch

    ids = [tok.encode(lead + q, add_special_tokens=False) + [term] for q in questions]
    T1 = max(map(len, ids))
    out = torch.full((len(ids), T1), tok.pad_token_id)
    for i, x in enumerate(ids):
        out[i, : len(x)] = torch.tensor(x)
    return out, torch.tensor([len(x) - 1 for x in ids])


@pytest.fixture
def compose_cfg(tmp_path):
    def _compose(overrides=None):
        return compose(overrides, output_dir=tmp_path / "run")

    return _compose


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RedisServer:
    """A redis-server process on a free loopback port, with its own data directory."""

    def __init__(self, workdir: Path, persistence: bool = False):
        exe = shutil.which("redis-server")
        if exe is None:
            pytest.fail("redis-server not installed: run scripts/setup.sh (installs the Debian package redis-server)")
        self.exe, self.workdir, self.persistence = exe, workdir, persistence
        self.port = _free_port()
        self.proc: subprocess.Popen | None = None

    def start(self) -> "RedisServer":
        self.workdir.mkdir(parents=True, exist_ok=True)
        args = [self.exe, "--bind", "127.0.0.1", "--port", str(self.port), "--dir", str(self.workdir),
                "--save", "", "--appendonly", "yes" if self.persistence else "no", "--appendfsync", "always",
                "--protected-mode", "yes"]
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        import redis

        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                redis.Redis(port=self.port, socket_connect_timeout=0.2).ping()
                return self
            except redis.ConnectionError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"redis-server did not start on port {self.port}")

    def stop(self, kill: bool = False) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill() if kill else self.proc.terminate()
            self.proc.wait(timeout=10)

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


class LlamaServer:
    """llama-cpp-python's OpenAI-compatible server (scripts/serve_llama_cpp.sh) on a free loopback
    port, serving the packaged SmolLM2 GGUF."""

    def __init__(self, workdir: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.log = open(workdir / "llama_server.log", "w")
        env = {**os.environ, "PORT": str(self.port), "THREADS": "2"}
        self.proc = subprocess.Popen(["bash", str(ROOT / "scripts" / "serve_llama_cpp.sh")], env=env, stdout=self.log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        import urllib.request

        deadline = time.time() + 120
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"llama-cpp server exited ({self.proc.returncode}); see {workdir / 'llama_server.log'}")
            try:
                with urllib.request.urlopen(f"{self.url}/models", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"llama-cpp server did not answer within 120 s; see {workdir / 'llama_server.log'}")

    def stop(self) -> None:
        import signal

        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()


@pytest.fixture(scope="session")
def llama_server(tmp_path_factory):
    try:
        import llama_cpp.server  # noqa: F401
    except ImportError:
        pytest.skip("llama-cpp-python's server is not installed (WITH_LLAMA_SERVER=1 bash scripts/setup.sh installs it; CI does)")
    server = LlamaServer(tmp_path_factory.mktemp("llama"))
    yield server
    server.stop()
