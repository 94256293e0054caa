"""Data parallel on the CPU twin (issue 12's benchmark, not a test): N ranks x 1 thread against 1 process x N
threads on the same cores, at the same global batch, in one run.

    python bench/dist.py                       GPT-2 124M (B=4 per rank, T=64), N=2, mpirun and torchrun-style tcp
    python bench/dist.py --shape tiny --steps 4 --rounds 1       a quick check of the script itself
    python bench/dist.py --nproc 2 --launch tcp --zero 0 --out DIR

Sides (same build of `llmgen build SPEC --distributed`, same random init from -S, same shard of random tokens):
- `1x{N}t`: one process, OMP_NUM_THREADS=N, -b N*B;
- `{N}x1t mpi`: mpirun -np N (when installed; Open MPI binds each rank to a core), OMP_NUM_THREADS=1, -b B;
- `{N}x1t tcp`: N processes with torchrun-style variables on 127.0.0.1 (comm.h's TCP mesh), OMP_NUM_THREADS=1.
A step's time is the "ms" of rank 0's log.jsonl (zero-grad to the end of the update, the collectives included);
the first --warmup steps of each run are dropped and the table reports the median (and minimum) over the rest of
all rounds; the sides alternate within each round, so a noisy machine slows all of them alike. Bytes per step are
what each rank sends: ZeRO-1's reduce-scatter + all-gather, or -z 0's all-reduce, both 2(N-1)/N of the fp32
parameters (PARAM_ELEMS). The scaling ratio is a side's tokens/s over the one-process side's (issue 12's goal at
124M: at least 0.9 for 2 ranks x 1 thread). The step-1 losses of every side are printed: they must agree to ~1e-6.

Writes OUT/dist.json and OUT/table.md (OUT: out/bench-dist, git-ignored). Exit status 0 unless a side fails.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SHAPES = {"124m": ("gpt2", 4, 64), "tiny": ("gpt2-tiny", 4, 64)}  # name: (preset, B per rank, T)
# mpirun as root and with more ranks than cores (a VM); variables a launcher sets are never inherited
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
LAUNCHER_PREFIXES = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_", "SLURM_", "OMPI_", "PMI")


def log(msg: str) -> None:
    print(msg, flush=True)


def clean_env(extra: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    return {**env, **MPI_ENV, **{k: str(v) for k, v in extra.items()}}


def write_shard(path: Path, n_tokens: int, vocab: int, seed: int = 0) -> None:
    """One llm.c token shard (magic 20240520, version 1, uint16 tokens) of uniform random tokens."""
    header = np.zeros(256, dtype=np.int32)
    header[:3] = (20240520, 1, n_tokens)
    tokens = np.random.default_rng(seed).integers(0, vocab, size=n_tokens).astype(np.uint16)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(header.tobytes())
        f.write(tokens.tobytes())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_side(side: str, binary: Path, n: int, flags: list[str], run: Path, timeout: float) -> list[dict]:
    """One run of a side; the step records of rank 0's log.jsonl."""
    shutil.rmtree(run, ignore_errors=True)
    argv = [str(binary), *flags, "-o", str(run)]
    if side == "1proc":
        cmds = [(argv, clean_env({"OMP_NUM_THREADS": n}))]
    elif side == "mpi":
        cmds = [(["mpirun", "--oversubscribe", "-np", str(n), *argv], clean_env({"OMP_NUM_THREADS": 1}))]
    else:
        port = free_port()
        world = {"WORLD_SIZE": n, "LOCAL_WORLD_SIZE": n, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": port}
        cmds = [(argv, clean_env({**world, "RANK": r, "LOCAL_RANK": r, "OMP_NUM_THREADS": 1})) for r in range(n)]
    procs = [subprocess.Popen(a, env=e, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for a, e in cmds]
    errors = []
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
        if p.returncode != 0:
            errors.append(err[-2000:])
    if errors:
        raise SystemExit(f"{side} failed:\n" + "\n".join(errors))
    return [r for r in map(json.loads, open(run / "log.jsonl")) if "train_loss" in r]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shape", choices=sorted(SHAPES), default="124m")
    ap.add_argument("--nproc", type=int, default=2, help="ranks, and the one process's threads [2]")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--warmup", type=int, default=1, help="steps of each run left out of the times [1]")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--zero", type=int, choices=(0, 1), default=1, help="-z of the N-rank sides [1]")
    ap.add_argument("--launch", default="mpi,tcp", help="N-rank launches: mpi, tcp [mpi,tcp]")
    ap.add_argument("--out", type=Path, default=REPO / "out" / "bench-dist")
    args = ap.parse_args()

    from llmgen.codegen import Options
    from llmgen.runtime.build import build_trainer, mpi_c_compiler
    from llmgen.spec import load_spec

    preset, B, T = SHAPES[args.shape]
    n = args.nproc
    spec = load_spec(preset, None).replace(dtype="fp32")
    out = args.out
    build = out / f"build-{args.shape}"
    log(f"building {preset} --distributed in {build}")
    binary = build_trainer(spec, Options(target="c", distributed=True), build)
    params = int(re.search(r"PARAM_ELEMS = (\d+)L;", (build / "train.c").read_text()).group(1))
    shard = out / "data" / "shard_000.bin"
    tokens_per_step = n * B * T
    write_shard(shard, tokens_per_step * args.steps + 1, spec.vocab_size)
    common = ["-i", str(shard), "-t", str(T), "-x", str(args.steps), "-v", "0", "-l", "1e-4", "-c", "0.1", "-S", "1234"]
    sides = {"1proc": ["-b", str(n * B)]}
    launches = [s for s in args.launch.split(",") if s]
    if "mpi" in launches and not (shutil.which("mpirun") and mpi_c_compiler()):
        log("mpirun or an MPI build is missing: the mpi side is left out")
        launches.remove("mpi")
    for s in launches:
        sides[s] = ["-b", str(B), "-z", str(args.zero)]
    times: dict[str, list[float]] = {s: [] for s in sides}
    first: dict[str, float] = {}
    for rnd in range(args.rounds):
        order = list(sides) if rnd % 2 == 0 else list(sides)[::-1]
        for s in order:
            t0 = time.monotonic()
            recs = run_side(s, binary, n, [*common, *sides[s]], out / f"run-{s}", timeout=3600)
            times[s] += [r["ms"] for r in recs[args.warmup :]]
            first[s] = recs[0]["train_loss"]
            log(
                f"round {rnd + 1} {s}: {statistics.median(r['ms'] for r in recs[args.warmup :]):.1f} ms/step "
                f"({time.monotonic() - t0:.0f} s)"
            )
    names = {"1proc": f"1x{n}t", "mpi": f"{n}x1t mpi", "tcp": f"{n}x1t tcp"}
    comm_bytes = {s: (0 if s == "1proc" else 2 * (n - 1) / n * params * 4) for s in sides}
    base = tokens_per_step / (statistics.median(times["1proc"]) / 1000)
    rows, summary = ["| side | ms/step (median) | min | tok/s | MB sent per rank per step | vs 1 process |"], {}
    rows.append("| --- | --- | --- | --- | --- | --- |")
    for s in sides:
        med, lo = statistics.median(times[s]), min(times[s])
        tok_s = tokens_per_step / (med / 1000)
        summary[s] = dict(ms=med, min_ms=lo, tok_s=tok_s, bytes=comm_bytes[s], ratio=tok_s / base, loss1=first[s])
        rows.append(
            f"| {names[s]} | {med:.1f} | {lo:.1f} | {tok_s:.0f} | {comm_bytes[s] / 1e6:.1f} | {tok_s / base:.3f} |"
        )
    table = "\n".join(rows) + "\n"
    log(
        f"\n{args.shape}: N={n}, B={B} per rank, T={T}, {params} params, -z {args.zero}, {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}\n" + table
    )
    log("step-1 losses: " + ", ".join(f"{names[s]} {first[s]:.6f}" for s in sides))
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table)
    env = dict(shape=args.shape, nproc=n, B=B, T=T, params=params, zero=args.zero, cores=os.cpu_count())
    (out / "dist.json").write_text(json.dumps(dict(env=env, times=times, summary=summary), indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
