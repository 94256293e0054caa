"""The CPU twin against PyTorch eager on the CPU: time per training step, throughput, FLOP rate
and peak memory, in one run.

    python bench/cpu.py                      GPT-2 124M (B=4, T=64) and gpt2-tiny: table + JSON
    python bench/cpu.py --quick              gpt2-tiny only, a few steps (the smoke test runs this)
    python bench/cpu.py --shapes 124m --steps 8 --rounds 3 --peers hf,plain --out DIR
    python bench/cpu.py --shapes 124m --blocks kc=128 --blocks kc=256   the twin with other GEMM blocks beside it

Both sides train the same model from the same start, on the same batches, with the same optimizer:
- weights: a random transformers GPT2LMHeadModel (seeded, dropout 0) saved with save_pretrained;
  the twin reads that folder with -e, PyTorch loads the same folder;
- batches: one llm.c token shard of random tokens, read in llm.c's order (B*T+1 tokens per
  micro-batch, advancing B*T) by both sides;
- optimizer: AdamW betas (0.9, 0.95), eps 1e-8, weight decay 0.1 on 2-D weights only, constant lr,
  grad-norm clip 1.0; one micro-batch per step;
- threads: torch.set_num_threads(N) and OMP_NUM_THREADS=N for the twin (N = --threads, default 2);
  both use libgomp. The twin sets GOMP_SPINCOUNT=1000 for itself (see program.c.j2: it matters only
  when other processes compete for the cores); --spincount / --wait-policy set them for every side.
The step-1 losses of every side are printed next to each other: they must agree (same math).

PyTorch peers (--peers): `hf` = transformers GPT2LMHeadModel, eager attention (the issue's
reference); `plain` = bench/torch_gpt2.py, GPT-2 written for speed (fused QKV, SDPA attention).

Each run of each side is its own subprocess (peak RSS = that process's VmHWM from /proc), and
the sides alternate (twin, hf, plain, then reversed, ...) for --rounds rounds, so a noisy machine
slows all of them alike. A step's time is the wall time of zero-grad + forward + backward + clip +
AdamW (the twin's step lines, the "ms" of its log.jsonl; the same span timed in the PyTorch
worker); the first --warmup steps of every run are dropped; the table reports the median over the
rest of all rounds (and the minimum, a noise-free lower bound). On a shared machine other processes
steal cores: before each run the script waits (--settle) for them to go quiet, and the table's last
column says how many cores they used during the runs. FLOPs per step are the model's (llmgen
inspect's count: matmuls forward + backward, plus attention), the same number for every side.

The twin is built with this machine's GEMM blocks (LLMGEN_CPU_PROFILE=host unless set; llmgen/codegen/c.py),
and the table's head names the CPU: model, logical CPUs and threads used, per-core caches, AVX-512 or not,
and the blocks chosen (cpu.json's environment holds the same).

Writes OUT/cpu.json (every step time, the environment, the summary) and OUT/table.md; OUT defaults
to out/bench-cpu (git-ignored). Exit status 0 unless a side fails to run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

# name: (preset, B, T)
SHAPES = {"124m": ("gpt2", 4, 64), "tiny": ("gpt2-tiny", 4, 64)}
LR, WEIGHT_DECAY, SEED = 1e-4, 0.1, 1234


def log(msg: str) -> None:
    print(msg, flush=True)


# --------------------------------------------------------------------------------------------
# setup: model folder, token shard, twin binary


def make_model_dir(spec, path: Path) -> Path:
    """A random GPT2LMHeadModel with the spec's config, saved with save_pretrained (safetensors)."""
    if (path / "model.safetensors").is_file():
        return path
    import torch
    import transformers
    from transformers import GPT2Config, GPT2LMHeadModel

    transformers.utils.logging.set_verbosity_error()
    cfg = {k: v for k, v in spec.hf_config().items() if k not in ("architectures", "torch_dtype")}
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(GPT2Config(**cfg)).float()
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path, safe_serialization=True)
    return path


def make_shard(spec, path: Path, n_tokens: int) -> Path:
    import numpy as np
    from llmgen.data import read_shard_header, write_shard

    if path.is_file() and read_shard_header(path).num_tokens >= n_tokens:
        return path
    rng = np.random.default_rng(SEED)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_shard(path, rng.integers(0, spec.vocab_size, size=n_tokens), spec.vocab_size)


def build_twin(preset: str, out: Path, blocks: str = "") -> Path:
    """`llmgen build <preset> -o out`, as a user runs it (cached by source hash), with the GEMM blocks of this
    machine (LLMGEN_CPU_PROFILE=host, llmgen/codegen/c.py) unless the environment names a profile; blocks:
    LLMGEN_GEMM_BLOCKS for this build (kc=..,mc=..,nc=..: a --blocks variant)."""
    env = dict(os.environ, LLMGEN_CPU_PROFILE=os.environ.get("LLMGEN_CPU_PROFILE") or "host")
    if blocks:
        env["LLMGEN_GEMM_BLOCKS"] = blocks
    r = subprocess.run(
        [sys.executable, "-m", "llmgen", "build", preset, "-o", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        env=env,
    )
    if r.returncode != 0:
        raise SystemExit(f"llmgen build {preset} failed:\n{r.stdout}\n{r.stderr}")
    return out / "train"


# --------------------------------------------------------------------------------------------
# one run of one side, in its own process


def cpu_busy_seconds() -> float:
    """Seconds of CPU time all processes have used since boot (/proc/stat, every core)."""
    fields = open("/proc/stat").readline().split()[1:]
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def settle(limit_s: float, cores: float = 0.25) -> float:
    """Wait (at most limit_s) until the other processes use under `cores` cores over a 1 s window;
    returns the background load seen last (this is a shared machine: see the table's last column)."""
    deadline = time.time() + limit_s
    while True:
        b0, t0 = cpu_busy_seconds(), time.time()
        time.sleep(1.0)
        load = (cpu_busy_seconds() - b0) / (time.time() - t0)
        if load < cores or time.time() >= deadline:
            return load
        time.sleep(1.0)


def run_process(cmd: list[str], env: dict, log_path: Path) -> tuple[int, float, str, float]:
    """Run cmd; return (exit status, peak RSS in MiB, its stdout, background load). The peak is the
    child's own VmHWM (/proc/PID/status), sampled every 10 ms until it exits: wait4's ru_maxrss
    would also count the pages the child shared with this (large) Python before its exec. The
    background load is the CPU time other processes used meanwhile, in cores (all CPU time on the
    machine minus the child's, over the wall time)."""
    out_path = log_path.with_suffix(".out")
    busy0, wall0 = cpu_busy_seconds(), time.time()
    with open(log_path, "w") as err, open(out_path, "w") as out:
        p = subprocess.Popen(cmd, stdout=out, stderr=err, env=env, cwd=REPO)
        hwm_kib = 0
        while True:
            try:
                status = Path(f"/proc/{p.pid}/status").read_text()
                m = re.search(r"^VmHWM:\s+(\d+) kB", status, re.M)
                if m:
                    hwm_kib = max(hwm_kib, int(m.group(1)))
            except OSError:
                pass
            pid, wstatus, ru = os.wait4(p.pid, os.WNOHANG)
            if pid:
                p.returncode = os.waitstatus_to_exitcode(wstatus)
                break
            time.sleep(0.01)
    wall = time.time() - wall0
    background = max(0.0, (cpu_busy_seconds() - busy0 - ru.ru_utime - ru.ru_stime) / wall)
    return p.returncode, hwm_kib / 1024.0, out_path.read_text(), background


WAIT_POLICY = ""  # --wait-policy: OMP_WAIT_POLICY for every side ("" = the OpenMP library's default)
SPINCOUNT = ""  # --spincount: GOMP_SPINCOUNT for every side ("" = unset)


def omp_env(threads: int) -> dict:
    """The environment of every side: OMP_NUM_THREADS, and the OpenMP waiting settings when asked
    (both sides use libgomp). Unset, the twin gives itself GOMP_SPINCOUNT=1000 (program.c.j2) and
    PyTorch keeps libgomp's default."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    for k in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT"):
        env.pop(k, None)
    if WAIT_POLICY:
        env["OMP_WAIT_POLICY"] = WAIT_POLICY
    if SPINCOUNT:
        env["GOMP_SPINCOUNT"] = SPINCOUNT
    return env


def run_twin(
    binary: Path, model: Path, shard: Path, B: int, T: int, steps: int, threads: int, work: Path, tag: str
) -> dict:
    """No -o: a run folder would add the final checkpoint's host copies to the peak RSS (PyTorch's
    side saves nothing either); the step lines on stdout carry the same ms and loss as log.jsonl."""
    cmd = [
        str(binary),
        "-e",
        str(model),
        "-i",
        str(shard),
        "-b",
        str(B),
        "-t",
        str(T),
        "-x",
        str(steps),
        "-l",
        str(LR),
        "-k",
        "constant",
        "-c",
        str(WEIGHT_DECAY),
        "-v",
        "0",
    ]
    env = omp_env(threads)
    rc, rss, out, bg = run_process(cmd, env, work / f"{tag}.log")
    if rc != 0:
        raise SystemExit(f"twin failed ({rc}): see {work / f'{tag}.log'}")
    rows = re.findall(r"^step \d+/\d+ \| loss ([-0-9.eE+naif]+) .*\| ([0-9.]+) ms", out, re.M)
    if len(rows) != steps:
        raise SystemExit(f"twin printed {len(rows)} step lines, expected {steps}: see {work / f'{tag}.out'}")
    return {"ms": [float(r[1]) for r in rows], "loss": [float(r[0]) for r in rows], "rss_mib": rss, "background": bg}


def run_torch(
    peer: str, model: Path, shard: Path, B: int, T: int, steps: int, threads: int, work: Path, tag: str
) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        peer,
        "--model",
        str(model),
        "--shard",
        str(shard),
        "-b",
        str(B),
        "-t",
        str(T),
        "--steps",
        str(steps),
        "--threads",
        str(threads),
    ]
    env = omp_env(threads)
    rc, rss, out, bg = run_process(cmd, env, work / f"{tag}.log")
    if rc != 0:
        raise SystemExit(f"torch worker {peer} failed ({rc}): see {work / f'{tag}.log'}")
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {"ms": [r["ms"] for r in rows], "loss": [r["loss"] for r in rows], "rss_mib": rss, "background": bg}


def torch_worker(args) -> int:
    """--worker hf|plain: train `steps` steps, print one JSON line per step (ms, loss)."""
    import numpy as np
    import torch
    import torch.nn.functional as F
    from llmgen.checkpoint import read_safetensors
    from llmgen.data import read_shard
    from torch_gpt2 import GPT2, optimizer

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    if args.worker == "hf":
        import transformers
        from transformers import GPT2LMHeadModel

        transformers.utils.logging.set_verbosity_error()
        model = GPT2LMHeadModel.from_pretrained(args.model, dtype=torch.float32, attn_implementation="eager")

        def loss_fn(x, y):
            logits = model(input_ids=x, use_cache=False).logits
            return F.cross_entropy(logits.view(-1, logits.size(-1)), y.view(-1))
    else:
        model = GPT2.from_hf_dir(args.model, read_safetensors)
        loss_fn = model
    model.train()
    opt = optimizer(model, LR, WEIGHT_DECAY, fused=False)
    params = [p for p in model.parameters()]
    tokens = np.asarray(read_shard(args.shard), dtype=np.int64)
    B, T, pos = args.b, args.t, 0
    for step in range(1, args.steps + 1):
        buf = torch.from_numpy(tokens[pos : pos + B * T + 1].copy())
        x, y = buf[:-1].view(B, T), buf[1:].view(B, T)
        pos += B * T
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lv = loss.item()
        ms = (time.perf_counter() - t0) * 1e3
        print(json.dumps({"step": step, "ms": ms, "loss": lv}), flush=True)
    return 0


# --------------------------------------------------------------------------------------------
# the benchmark


def cpu_info() -> dict:
    """The CPU the benchmark runs on and the GEMM blocks the twin was built with: its model name, logical CPUs,
    per-core caches and vector width as llmgen/codegen/c.py reads them (the profile the blocks come from)."""
    from llmgen.codegen import c as c_target

    profile = c_target.cpu_profile(os.environ.get("LLMGEN_CPU_PROFILE") or "host")
    limits = c_target.block_limits(profile)
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").is_file() else ""
    return {
        "cpu": profile.name,
        "cores": os.cpu_count(),
        "isa": [f for f in ("avx512f", "avx2", "fma") if re.search(rf"\b{f}\b", flags)],
        "avx512": profile.vl == 16,
        "l1d_kib": profile.l1d >> 10,
        "l2_kib": profile.l2 >> 10,
        "l3_kib_per_core": profile.l3 >> 10,
        "gemm_blocks": {
            "kc_max": limits["kc"],
            "mc_at_kc": max(16, limits["a_block"] // 4 // limits["kc"]),
            "nc_at_kc": max(32, limits["b_panel"] // 4 // limits["kc"]),
            "a_block_kib": limits["a_block"] >> 10,
            "b_panel_kib": limits["b_panel"] >> 10,
            "override": os.environ.get(c_target.BLOCKS_ENV, ""),
        },
    }


def environment_info(threads: int) -> dict:
    import torch

    gcc = subprocess.run(["gcc", "--version"], capture_output=True, text=True).stdout.splitlines()[:1]
    return {
        **cpu_info(),
        "threads": threads,
        "omp_wait_policy": WAIT_POLICY or "default",
        "gomp_spincount": SPINCOUNT or "default (twin: 1000)",
        "torch": torch.__version__,
        "gcc": gcc[0] if gcc else "",
        "python": platform.python_version(),
        "loadavg_start": os.getloadavg()[0],
    }


def summarize(runs: list[dict], warmup: int, flops_per_step: float, tokens_per_step: int) -> dict:
    ms = [m for r in runs for m in r["ms"][warmup:]]
    med = statistics.median(ms)
    return {
        "median_ms": med,
        "min_ms": min(ms),
        "tokens_per_s": tokens_per_step / (med / 1e3),
        "gflops": flops_per_step / (med / 1e3) / 1e9,
        "peak_rss_mib": max(r["rss_mib"] for r in runs),
        "loss_step1": runs[0]["loss"][0],
        "background_cores": statistics.mean(r["background"] for r in runs),
        "step_ms": ms,
    }


def bench_shape(name: str, args, work: Path) -> dict:
    from llmgen.cli.inspect import inspect_report
    from llmgen.spec import load_spec

    preset, B, T = SHAPES[name]
    if args.b:
        B = args.b
    if args.t:
        T = args.t
    spec = load_spec(preset)
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    steps = args.warmup + args.steps
    log(f"[{name}] preparing: random {preset} weights, a token shard, `llmgen build {preset}`")
    model = make_model_dir(spec, d / "model")
    shard = make_shard(spec, d / "data" / "train_000000.bin", steps * B * T + 1)
    binaries = {"twin": build_twin(preset, d / "build")}
    for i, blocks in enumerate(args.blocks):  # the same twin with other GEMM blocks
        binaries[f"twin[{blocks}]"] = build_twin(preset, d / f"build-{i}", blocks)
    rep = inspect_report(spec, B, T)
    flops_step = rep["flops_per_token"] * B * T
    sides = list(binaries) + args.peers
    runs: dict[str, list] = {s: [] for s in sides}
    for r in range(args.rounds):
        order = sides if r % 2 == 0 else sides[::-1]
        for s in order:
            tag = f"{s}-{r}"
            if args.settle:
                settle(args.settle)
            t0 = time.time()
            if s in binaries:
                res = run_twin(
                    binaries[s], model, shard, B, T, steps, args.threads, d, tag.replace("=", "").replace(",", "-")
                )
            else:
                res = run_torch(s, model, shard, B, T, steps, args.threads, d, tag)
            runs[s].append(res)
            post = res["ms"][args.warmup :]
            log(
                f"[{name}] round {r + 1}/{args.rounds} {s:5s}: median {statistics.median(post):9.1f} ms/step, "
                f"peak RSS {res['rss_mib']:7.0f} MiB, loss@1 {res['loss'][0]:.6f}, other processes "
                f"{res['background']:.2f} cores  ({time.time() - t0:.0f} s)"
            )
    out = {
        "shape": name,
        "preset": preset,
        "B": B,
        "T": T,
        "params": rep["params"],
        "flops_per_step": flops_step,
        "warmup": args.warmup,
        "steps": args.steps,
        "rounds": args.rounds,
        "sides": {s: summarize(runs[s], args.warmup, flops_step, B * T) for s in sides},
    }
    tw = out["sides"]["twin"]
    for s in list(binaries)[1:]:
        out["sides"][s]["time_vs_twin"] = out["sides"][s]["median_ms"] / tw["median_ms"]
    for s in args.peers:
        p = out["sides"][s]
        p["twin_time_ratio"] = tw["median_ms"] / p["median_ms"]
        p["twin_rss_ratio"] = tw["peak_rss_mib"] / p["peak_rss_mib"]
        p["loss_step1_rel_diff"] = abs(tw["loss_step1"] - p["loss_step1"]) / abs(p["loss_step1"])
    return out


def table(results: list[dict], env: dict) -> str:
    blocks = env["gemm_blocks"]
    lines = [
        f"CPU: {env['cpu']} ({env['cores']} logical CPUs, {env['threads']} threads used; "
        f"{'AVX-512' if env['avx512'] else 'no AVX-512'}: {', '.join(env['isa'])}; per core L1d {env['l1d_kib']} KiB, "
        f"L2 {env['l2_kib']} KiB, L3 {env['l3_kib_per_core']} KiB)",
        f"twin GEMM blocks: kc <= {blocks['kc_max']}, A blocks {blocks['a_block_kib']} KiB (mc {blocks['mc_at_kc']}), "
        f"B panels {blocks['b_panel_kib']} KiB (nc {blocks['nc_at_kc']})"
        + (f", LLMGEN_GEMM_BLOCKS={blocks['override']}" if blocks["override"] else ""),
        f"OMP_WAIT_POLICY {env['omp_wait_policy']}, GOMP_SPINCOUNT {env['gomp_spincount']} | "
        f"torch {env['torch']} | {env['gcc']} | load average {env['loadavg_start']:.2f} -> "
        f"{env['loadavg_end']:.2f}",
        "",
        "| shape | side | median ms/step | min ms | tokens/s | GFLOP/s | peak RSS MiB | twin time / side | "
        "twin RSS / side | loss@1 | other load |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    names = {
        "twin": "llmgen CPU twin",
        "hf": "PyTorch eager (HF GPT2LMHeadModel)",
        "plain": "PyTorch eager (plain GPT-2, SDPA)",
    }
    for res in results:
        shape = (
            f"{res['shape']} ({res['params'] / 1e6:.1f}M, B={res['B']} T={res['T']}, "
            f"{res['flops_per_step'] / 1e9:.1f} GFLOP/step)"
        )
        for s, v in res["sides"].items():
            ratio = f"{v['twin_time_ratio']:.2f}x" if "twin_time_ratio" in v else ""
            name = names.get(s) or "llmgen CPU twin, LLMGEN_GEMM_BLOCKS=" + s[len("twin[") : -1]
            if "time_vs_twin" in v:  # a --blocks variant: its time against the twin's
                ratio = f"(this / twin {v['time_vs_twin']:.2f}x)"
            rss = f"{v['twin_rss_ratio']:.2f}x" if "twin_rss_ratio" in v else ""
            lines.append(
                f"| {shape} | {name} | {v['median_ms']:.1f} | {v['min_ms']:.1f} | {v['tokens_per_s']:.0f} | "
                f"{v['gflops']:.1f} | {v['peak_rss_mib']:.0f} | {ratio} | {rss} | {v['loss_step1']:.6f} | "
                f"{v['background_cores']:.2f} |"
            )
            shape = ""
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--shapes", default="124m,tiny", help="comma list of: " + ", ".join(SHAPES))
    ap.add_argument("--peers", default="hf", help="PyTorch peers, comma list of: hf, plain")
    ap.add_argument("--steps", type=int, default=6, help="timed steps per run (after the warm-up)")
    ap.add_argument("--warmup", type=int, default=2, help="steps dropped at the start of every run")
    ap.add_argument("--rounds", type=int, default=3, help="alternating runs of every side")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument(
        "--settle",
        type=float,
        default=30.0,
        help="before each run wait up to this many seconds for other processes to go quiet (0: don't)",
    )
    ap.add_argument(
        "--wait-policy",
        choices=("", "active", "passive"),
        default="",
        help="OMP_WAIT_POLICY for every side (both use libgomp); passive helps on a busy machine",
    )
    ap.add_argument(
        "--spincount",
        default="",
        help="GOMP_SPINCOUNT for every side (the twin sets 1000 for itself when this is unset)",
    )
    ap.add_argument(
        "--blocks",
        action="append",
        default=[],
        metavar="kc=N,mc=N,nc=N",
        help="also run the twin built with these GEMM blocks (LLMGEN_GEMM_BLOCKS; repeat for more variants)",
    )
    ap.add_argument("-b", type=int, default=0, help="override the shapes' batch size")
    ap.add_argument("-t", type=int, default=0, help="override the shapes' sequence length")
    ap.add_argument("--out", default=str(REPO / "out" / "bench-cpu"), help="folder for cpu.json, table.md, runs")
    ap.add_argument("--quick", action="store_true", help="smoke run: tiny shape, 2 + 3 steps, 1 round")
    # internal: one PyTorch side in its own process
    ap.add_argument("--worker", choices=("hf", "plain"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    ap.add_argument("--shard", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        return torch_worker(args)
    global WAIT_POLICY, SPINCOUNT
    WAIT_POLICY, SPINCOUNT = args.wait_policy, args.spincount
    if args.quick:
        args.shapes, args.steps, args.warmup, args.rounds, args.settle = "tiny", 3, 2, 1, 0.0
    args.peers = [p for p in args.peers.split(",") if p]
    shapes = [s for s in args.shapes.split(",") if s]
    for s in shapes:
        if s not in SHAPES:
            ap.error(f"unknown shape {s!r}: choose from {', '.join(SHAPES)}")
    for p in args.peers:
        if p not in ("hf", "plain"):
            ap.error(f"unknown peer {p!r}: hf or plain")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    env = environment_info(args.threads)
    results = [bench_shape(s, args, out) for s in shapes]
    env["loadavg_end"] = os.getloadavg()[0]
    text = table(results, env)
    (out / "table.md").write_text(text + "\n")
    (out / "cpu.json").write_text(
        json.dumps(
            {"environment": env, "results": results, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])},
            indent=1,
        )
    )
    log("\n" + text + f"\n\nwrote {out / 'cpu.json'} and {out / 'table.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
