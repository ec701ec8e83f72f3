"""Replay-buffer throughput through a real redis-server, beside the in-memory buffer.

    python bench/bench_buffer.py                 # starts its own redis-server on a free loopback port
    python bench/bench_buffer.py --seconds 5

An "add" is one call with a step's 8 questions (25 tokens, per-prefix rewards, components);
a "sample" draws 8 entries for one prompt. 32 prompts, capacity 128 per prompt, as in training.
"""

from __future__ import annotations

import argparse
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from gflownet.core.replay_buffer import BufferEntry, InMemoryReplayBuffer, RedisReplayBuffer  # noqa: E402

PROMPTS = [f"Generate a question about subject {i}:\nQuestion:" for i in range(32)]


def make_entries(rng: random.Random, n: int = 8, length: int = 25) -> list[BufferEntry]:
    out = []
    for _ in range(n):
        r = rng.uniform(-40, 0)
        log_r = [None] * 5 + [rng.uniform(-40, 0) if t % 4 == 0 else None for t in range(5, length)] + [r]
        out.append(BufferEntry(f"question {rng.randrange(10**6)}?", [rng.randrange(50000) for _ in range(length)] + [30],
                               log_r, r, {"log_c": -0.5, "log_p": -30.0, "answer": "An answer sentence of a few words."}))
    return out


def measure(buf, seconds: float) -> tuple[float, float]:
    rng = random.Random(0)
    gen = torch.Generator().manual_seed(0)
    batches = [make_entries(rng) for _ in range(200)]
    for i, p in enumerate(PROMPTS):  # fill every prompt to capacity first
        for b in range(20):
            buf.add(p, batches[(i + b) % len(batches)])
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        buf.add(PROMPTS[n % len(PROMPTS)], batches[n % len(batches)])
        n += 1
    adds = n / (time.perf_counter() - t0)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        buf.sample(PROMPTS[n % len(PROMPTS)], 8, gen)
        n += 1
    return adds, n / (time.perf_counter() - t0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=3.0)
    args = parser.parse_args()
    exe = shutil.which("redis-server")
    if exe is None:
        raise SystemExit("redis-server not installed: run scripts/setup.sh")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    workdir = tempfile.mkdtemp(prefix="bench-redis-")
    server = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--dir", workdir, "--save", "",
                               "--appendonly", "no"], stdout=subprocess.DEVNULL)
    try:
        for _ in range(100):
            try:
                redis_buf = RedisReplayBuffer(buffer_size=128, url=f"redis://127.0.0.1:{port}/0", namespace="bench")
                break
            except ConnectionError:
                time.sleep(0.05)
        rows = [("in-memory", *measure(InMemoryReplayBuffer(buffer_size=128), args.seconds)),
                ("redis (loopback)", *measure(redis_buf, args.seconds)),
                ("redis, reward-proportional sampling", *measure(
                    RedisReplayBuffer(buffer_size=128, sampling="reward", url=f"redis://127.0.0.1:{port}/0", namespace="bench2"),
                    args.seconds))]
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nReplay buffer throughput, {args.seconds:.0f} s per measurement, capacity 128, 32 prompts, "
          "an add = 8 questions of 25 tokens, a sample = 8 entries\n")
    print("| buffer | adds/s | questions added/s | samples/s | add time vs in-memory | sample time vs in-memory |")
    print("|---|---|---|---|---|---|")
    base_add, base_sample = rows[0][1], rows[0][2]
    for name, adds, samples in rows:
        print(f"| {name} | {adds:,.0f} | {8 * adds:,.0f} | {samples:,.0f} | {base_add / adds:.1f}x | {base_sample / samples:.1f}x |")


if __name__ == "__main__":
    main()
