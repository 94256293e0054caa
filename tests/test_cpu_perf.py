"""The CPU twin's performance work keeps its promises: the same bits whatever the thread count, and
the CPU benchmark (bench/cpu.py) runs and agrees with PyTorch on the first loss.

The GEMM engine (templates/c/gemm.h) splits C between threads but never a reduction, and every
other reduction has a fixed order, so a run with 1 thread and one with 3 write identical logs and
checkpoints. The shapes here are odd on purpose: partial register tiles in every GEMM (rows, columns
and the reduction), T not a multiple of anything.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import oracle
import pytest
from conftest import REPO, run_binary


def _losses(run):
    return [(r["train_loss"], r["grad_norm"]) for r in map(json.loads, open(run / "log.jsonl")) if "train_loss" in r]


def test_thread_count_does_not_change_the_bits(tmp_path, build_cache):
    model = oracle.make_gpt2_model_dir(
        tmp_path / "m", n_layer=2, n_head=3, n_embd=72, vocab_size=203, n_positions=64, seed=3
    )
    pat = oracle.random_shards(tmp_path / "data", 203, 4000, seed=5)
    binary = build_cache(model / "config.json")
    runs = {}
    for threads in (1, 3):
        run = tmp_path / f"t{threads}"
        env = dict(os.environ, OMP_NUM_THREADS=str(threads))
        r = subprocess.run(
            [
                str(binary),
                "-e",
                str(model),
                "-i",
                pat,
                "-b",
                "3",
                "-t",
                "37",
                "-x",
                "4",
                "-l",
                "1e-3",
                "-c",
                "0.1",
                "-v",
                "0",
                "-o",
                str(run),
            ],
            capture_output=True,
            text=True,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        runs[threads] = run
    assert _losses(runs[1]) == _losses(runs[3])
    a = (runs[1] / "ckpt_00000004" / "state.bin").read_bytes()
    b = (runs[3] / "ckpt_00000004" / "state.bin").read_bytes()
    assert a == b  # parameters and both AdamW moments, bit for bit


def test_emitted_gemms_are_the_engine(build_cache, tmp_path):
    model = oracle.make_gpt2_model_dir(
        tmp_path / "m", n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=16, seed=0
    )
    src = (build_cache(model / "config.json").parent / "train.c").read_text()
    assert "#define ALWAYS_INLINE static inline __attribute__((always_inline))" in src
    assert "ALWAYS_INLINE void gemm_thread(const Gemm *g)" in src
    assert "ALWAYS_INLINE void linear_forward(" in src  # the body, sizes as parameters
    # qkv: the schedule calls the body with literal sizes
    assert re.search(r"PARALLEL linear_forward\(NULL, A\.qkv, A\.ln1, [^;]*, BT, 32, 96, 0,", src)
    assert "expf(" not in src.split("// kernels")[1].split("// the schedule")[0]  # no libm exp in kernels


def test_cpu_benchmark_quick(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run(
        [sys.executable, str(REPO / "bench" / "cpu.py"), "--quick", "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    res = json.loads((out / "cpu.json").read_text())
    (shape,) = res["results"]
    twin, hf = shape["sides"]["twin"], shape["sides"]["hf"]
    assert len(twin["step_ms"]) == len(hf["step_ms"]) == 3
    assert twin["median_ms"] > 0 and twin["peak_rss_mib"] > 0 and hf["gflops"] > 0
    assert hf["loss_step1_rel_diff"] < 1e-5  # same weights, same batch, same math
    assert "PyTorch eager" in (out / "table.md").read_text()


def test_attention_causal_blocks_match_torch(tmp_path, build_cache):
    """T = 150 > the 64-row causal blocks of the attention kernels (two whole blocks and a partial one):
    step-0 loss and gradients against PyTorch, with tests/matrix.py's GPT2_C tolerances."""
    import numpy as np
    from llmgen.checkpoint import read_safetensors

    model = oracle.make_gpt2_model_dir(
        tmp_path / "m", n_layer=1, n_head=2, n_embd=32, vocab_size=100, n_positions=160, seed=4
    )
    pat = oracle.random_shards(tmp_path / "data", 100, 2000, seed=6)
    binary = build_cache(model / "config.json")
    run_binary(binary, "-e", model, "-i", pat, "-b", 2, "-t", 150, "--dump", tmp_path / "dump")
    got = read_safetensors(tmp_path / "dump")
    ref = oracle.step0_dump(model, pat, 2, 150)
    np.testing.assert_allclose(got["logits"], ref["logits"], atol=3e-6, rtol=0)
    assert abs(got["loss"][0] - ref["loss"]) <= 2e-6 * ref["loss"]
    for name, want in ref["grads"].items():
        err = np.abs(got["grad." + name] - want).max() / (np.abs(want).max() + 1e-30)
        assert err < 2e-5, (name, err)


def test_gemm_blocks_follow_the_machine_profile(monkeypatch, tmp_path):
    """codegen/c.py derives the GEMM blocks from a CPU profile: the fixed one by default (emit and the tests do
    not depend on this machine), this machine's with LLMGEN_CPU_PROFILE=host, and any blocks by
    LLMGEN_GEMM_BLOCKS; the emitted helpers say which machine and which blocks."""
    from llmgen.codegen import Options, c, render
    from llmgen.spec import PRESETS

    monkeypatch.delenv(c.PROFILE_ENV, raising=False)
    monkeypatch.delenv(c.BLOCKS_ENV, raising=False)
    assert c.cpu_profile() == c.FIXED
    assert c.block_limits(c.FIXED) == {"kc": 384, "a_block": 512 << 10, "b_panel": 1536 << 10}
    qkv = {"K": 768, "N": 2304, "M": "BT"}
    assert c.gemm_blocks("linear", qkv, c.block_limits(c.FIXED)) == {"kc": 384, "mc": 341, "nc": 1024}
    assert c.gemm_blocks("linear_dx", {"K": 3072, "N": 768, "M": "BT"}, c.block_limits(c.FIXED))["kc"] == 384
    # a Skylake-SP-like core (32 KiB L1d, 1 MiB L2): shorter slices, more rows; AVX2: 24-float tiles, longer slices
    sky = c.cpu_profile("l1d=32K,l2=1M,l3=1408K,vl=16,name=skx")
    assert c.block_limits(sky) == {"kc": 256, "a_block": 512 << 10, "b_panel": 1536 << 10}
    assert c.gemm_blocks("linear", qkv, c.block_limits(sky)) == {"kc": 256, "mc": 512, "nc": 1536}
    assert c.block_limits(c.cpu_profile("l1d=32K,l2=256K,vl=8"))["kc"] == 512
    (tmp_path / "p.json").write_text(json.dumps({"name": "skx", "l1d": "32K", "l2": "1M", "l3": "1408K", "vl": 16}))
    assert c.cpu_profile(str(tmp_path / "p.json")) == sky
    host = c.host_profile()
    assert host.vl in (4, 8, 16) and 0 < host.l1d <= host.l2 and host.l3 > 0 and host.name
    assert c.cpu_profile("host") == host  # deterministic for a machine
    with c.default_profile("l1d=32K,l2=1M,l3=1408K,vl=16,name=skx"):  # what a build would set ("host")
        assert c.cpu_profile() == sky
        monkeypatch.setenv(c.PROFILE_ENV, "fixed")  # the environment still decides first
        assert c.cpu_profile() == c.FIXED
        monkeypatch.delenv(c.PROFILE_ENV)
    assert c.cpu_profile() == c.FIXED
    monkeypatch.setenv(c.BLOCKS_ENV, "kc=128,nc=96")
    assert c.gemm_blocks("linear", qkv, c.block_limits(c.FIXED)) == {"kc": 128, "mc": 1024, "nc": 96}
    monkeypatch.setenv(c.BLOCKS_ENV, "kc=abc")
    with pytest.raises(ValueError, match="LLMGEN_GEMM_BLOCKS"):
        c.block_limits(c.FIXED)
    monkeypatch.delenv(c.BLOCKS_ENV)

    spec = PRESETS["gpt2-tiny"]
    fixed = render(spec, Options(target="c"))
    note = (
        "/* GEMM blocks for fixed profile (Zen 5) (L1d 48 KiB, L2 1 MiB, L3 16 MiB, AVX-512): kc <= 384, mc 341,"
        " nc 1024 */"
    )
    assert note in fixed.splitlines()  # one line for the fixed profile
    monkeypatch.setenv(c.PROFILE_ENV, "l1d=32K,l2=1M,l3=1408K,vl=16,name=" + "Intel(R) Xeon(R) Platinum 8480+ " * 3)
    monkeypatch.setenv(c.BLOCKS_ENV, "kc=512,mc=96,nc=960")
    other = render(spec, Options(target="c"))
    assert "for Intel(R) Xeon(R) Platinum 8480+ Intel" in other and "kc <= 512, mc 96, nc 960" in other
    assert abs(len(other.splitlines()) - len(fixed.splitlines())) <= 4  # literals of other widths may wrap a call
    assert max(map(len, other.splitlines())) <= 120
