"""The block weight-gradient GEMMs on a second stream (templates/cuda/program.cu.j2's dw_fork, the waits placed by
llmgen/codegen/cuda.py's dw_stream_schedule), checked where a missing wait shows: the emulation's
LLMGEN_EMU_DEFER_STREAMS runs the dW stream's work as late as CUDA allows (`side`: stream 0 overwriting a dW's input
too early, or a missing join, changes the numbers) or stream 0's as late (`main`: a dW reading its inputs before
stream 0 wrote them does). In both modes, with the micro-step's CUDA Graph replayed or not, the tiny bf16 GPT-2 and
Llama trainers give the step-0 gradients and the losses and grad norms of the run with every op on stream 0
(LLMGEN_DW_STREAM=0) bit for bit. The negative checks: built with LLMGEN_TEST_DW_NO_WAIT (no wait before an overwrite)
the `side` run differs; with LLMGEN_TEST_DW_NO_FORK (the dW does not wait for its inputs) the `main` run does.
Also: the emitted schedule's waits checked statically (gpt2 124M, llama3.1-8b), and the data-parallel exchange's wait
for the dW stream (2 emulated ranks)."""

import dataclasses
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import oracle
from llmgen.checkpoint import read_safetensors

REPO = Path(__file__).resolve().parents[2]

MODELS = {
    "gpt2": lambda d: oracle.make_gpt2_model_dir(
        d, n_layer=2, n_head=2, n_embd=32, vocab_size=100, n_positions=64, seed=7
    ),
    "llama": lambda d: oracle.make_llama_model_dir(
        d,
        dim=64,
        n_layers=2,
        n_heads=8,
        n_kv_heads=2,
        vocab_size=200,
        intermediate_size=160,
        max_position_embeddings=64,
        rope_scaling=None,
        tie_word_embeddings=False,
        rope_theta=500000.0,
        seed=5,
    ),
}


@pytest.fixture(scope="module", params=sorted(MODELS))
def trainers(request, tmp_path_factory):
    """The model folder, its token shards and the emulated bf16 trainer, plus the same source built with each test
    switch: {"": train, "NO_WAIT": ..., "NO_FORK": ...}."""
    from llmgen.runtime.build import build_cuda

    root = tmp_path_factory.mktemp(f"dw-{request.param}")
    mdir = MODELS[request.param](root / "m")
    vocab = 100 if request.param == "gpt2" else 200
    pattern = str(oracle.random_shards(root / "d", vocab, 3000))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "llmgen", "build", str(mdir / "config.json"), "--target", "cuda", "--emulate"]
    subprocess.run([*cmd, "--dtype", "bf16", "-o", str(root / "b")], check=True, capture_output=True, env=env)
    src = (root / "b" / "train.cu").read_text()
    assert "dw_fork(0);" in src and "dw_wait(" in src and "dw_join();" in src
    bins = {"": root / "b" / "train"}
    for switch in ("NO_WAIT", "NO_FORK"):
        out = root / f"b_{switch}" / "train"
        out.parent.mkdir()
        bins[switch] = Path(
            build_cuda(root / "b" / "train.cu", out, emulate=True, extra_flags=[f"-DLLMGEN_TEST_DW_{switch}"])
        )
    return mdir, pattern, bins, root


def _run(binary, mdir, pattern, out, env_extra, *flags):
    env = dict(os.environ, OMP_NUM_THREADS="2", **env_extra)
    r = subprocess.run(
        [str(binary), "-e", str(mdir), "-i", pattern, "-b", "2", "-t", "32", "-v", "0", "-s", "0", *map(str, flags)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def _steps(binary, mdir, pattern, out, env_extra):
    """losses and grad norms of 3 steps of 2 micro-batches (the graph is captured in the first step)"""
    _run(binary, mdir, pattern, out, env_extra, "-d", 128, "-x", 3, "-l", "1e-3", "-c", 0, "-o", out)
    rows = [json.loads(x) for x in open(out / "log.jsonl")]
    return [(r["train_loss"], r["grad_norm"]) for r in rows if "train_loss" in r]


def _grads(binary, mdir, pattern, out, env_extra):
    """--dump: the step-0 logits, loss and every parameter gradient"""
    _run(binary, mdir, pattern, out, env_extra, "--dump", out)
    return read_safetensors(out)


def _same(a, b):
    return set(a) == set(b) and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a)


MODES = [{"LLMGEN_EMU_DEFER_STREAMS": m, **g} for m in ("side", "main") for g in ({}, {"LLMGEN_NO_GRAPH": "1"})]


def test_deferred_streams_give_the_single_stream_numbers(trainers):
    mdir, pattern, bins, root = trainers
    one = {"LLMGEN_DW_STREAM": "0"}
    want_steps = _steps(bins[""], mdir, pattern, root / "one", one)
    want_grads = _grads(bins[""], mdir, pattern, root / "one.dump", one)
    assert len(want_steps) == 3 and any(k.startswith("grad.") for k in want_grads)
    for i, env in enumerate([{}, *MODES]):
        assert _steps(bins[""], mdir, pattern, root / f"s{i}", env) == want_steps, env
    for m in ("side", "main"):
        env = {"LLMGEN_EMU_DEFER_STREAMS": m}
        assert _same(_grads(bins[""], mdir, pattern, root / f"g-{m}.dump", env), want_grads), env


@pytest.mark.parametrize("switch, mode", [("NO_WAIT", "side"), ("NO_FORK", "main")])
def test_a_missing_wait_changes_the_deferred_numbers(trainers, switch, mode):
    """the check can fail: without the waits before the overwrites (side) or the fork's wait (main) the deferred
    run's gradients and grad norms differ from the single-stream run's"""
    mdir, pattern, bins, root = trainers
    one = {"LLMGEN_DW_STREAM": "0"}
    env = {"LLMGEN_EMU_DEFER_STREAMS": mode, "LLMGEN_NO_GRAPH": "1"}
    want = _grads(bins[""], mdir, pattern, root / f"n-one-{switch}.dump", one)
    got = _grads(bins[switch], mdir, pattern, root / f"n-{switch}.dump", env)
    assert not _same(got, want)
    # and LLMGEN_DW_STREAM=0 makes the switch irrelevant: every op on stream 0
    assert _same(_grads(bins[switch], mdir, pattern, root / f"n-{switch}-one.dump", {**env, **one}), want)
    assert _steps(bins[switch], mdir, pattern, root / f"n-{switch}-steps", env) != _steps(
        bins[""], mdir, pattern, root / f"n-{switch}-want", one
    )


@pytest.mark.parametrize(
    "name, dtype, recompute", [("gpt2", "bf16", 0), ("gpt2", "fp32", 2), ("llama3.1-8b", "bf16", 0)]
)
def test_every_block_dw_is_forked_and_each_wait_precedes_a_write_of_what_it_reads(name, dtype, recompute):
    """The schedule dw_stream_schedule emits, checked on the flat backward: each block dW sits between dw_fork(s)
    and dw_done(s), or stays on stream 0 where the next launch overwrites what it reads; between a forked dW and the
    first later launch that writes an arena range it reads, a dw_wait(s) of its slot (or the join) runs (a wait in a
    loop where its guard lets it); the backward ends with dw_join. --dtype fp8 forks none (its dW shares its
    linear's FP8 scratch)."""
    from llmgen.codegen import Options, program_for
    from llmgen.codegen.cuda import act_ranges, launch_effects
    from llmgen.codegen.lower import Loop, render_layers
    from llmgen.spec import PRESETS

    spec = PRESETS[name].replace(dtype=dtype)
    prog = program_for(spec, Options(target="cuda", recompute=recompute))
    assert prog.dw_slots > 0 and program_for(spec.replace(dtype="fp8"), Options(target="cuda")).dw_slots == 0
    flat = []  # the backward as it runs: a guarded wait ("if (l <= 10) dw_wait(1)") where its layer passes the guard
    for b in prog.backward:
        runs = b.expand() if isinstance(b, Loop) else [b]
        for i, x in enumerate(runs):
            guard = re.match(r"if \((.*)\) (.*)", x.call)
            if guard:
                layer = b.first + b.step * (i // len(b.body))
                if not eval(guard.group(1).replace("&&", "and").replace("||", "or"), {"l": layer}):
                    continue
                x = dataclasses.replace(x, call=guard.group(2))
            flat.append(x)
    assert flat[-1].call == "dw_join()"
    ranges, by_name = act_ranges(prog), {b.name: b.expr for b in prog.buffers}
    forked = 0
    for i, x in enumerate(flat):
        if x.fn.startswith("linear_dw") and not flat[i - 1].call.startswith("dw_fork("):
            # kept on stream 0: the next launch overwrites what it reads (it could overlap nothing)
            reads = launch_effects(x, ranges, by_name)[0]
            writes = launch_effects(next(y for y in flat[i + 1 :] if not y.call), ranges, by_name)[1]
            assert any(lo < ahi and alo < hi for _, (lo, hi) in writes for _, (alo, ahi) in reads), x.fn
        elif x.fn.startswith("linear_dw"):
            assert flat[i + 1].call.startswith("dw_done(")
            slot = flat[i - 1].call[len("dw_fork(") : -1]
            assert flat[i + 1].call == f"dw_done({slot})"
            forked += 1
            reads = launch_effects(x, ranges, by_name)[0]
            waited = False
            for y in flat[i + 2 :]:
                waited = waited or y.call in (f"dw_wait({slot})", "dw_join()")
                if y.call:
                    continue
                writes = launch_effects(y, ranges, by_name)[1]
                if any(lo < ahi and alo < hi for _, (lo, hi) in writes for _, (alo, ahi) in reads):
                    assert waited, f"{render_layers(y.statement())} overwrites what {x.fn} reads, unwaited"
                    break
    assert forked >= spec.n_layer * prog.dw_slots // 2


def test_data_parallel_exchange_waits_for_the_dw_stream(tmp_path):
    """2 ranks (emulated NCCL, -z 1), 4 layers, so the exchange of each layer's gradients starts in the backward
    (layer_grads_done): under `side` the run gives the bits of LLMGEN_DW_STREAM=0; the program without the exchange's
    wait for dw_stream (dw_fence) reduces gradients a deferred dW has not written yet, and differs."""
    sys.path.insert(0, str(REPO / "tests" / "distributed"))
    from dist_helpers import clean_env, free_port, launcher_env

    from conftest import losses_by_step
    from llmgen.runtime.build import build_cuda

    mdir = oracle.make_gpt2_model_dir(
        tmp_path / "m", n_layer=4, n_head=4, n_embd=64, vocab_size=500, n_positions=32, seed=3
    )
    pattern = str(oracle.random_shards(tmp_path / "d", 500, 20000, seed=1))
    env = dict(os.environ, PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "llmgen", "build", str(mdir / "config.json"), "--target", "cuda", "--emulate"]
    subprocess.run(
        [*cmd, "--dtype", "bf16", "--distributed", "-o", str(tmp_path / "b")],
        check=True,
        capture_output=True,
        env=env,
        cwd=REPO,
    )
    src = (tmp_path / "b" / "train.cu").read_text()
    assert "layer_grads_done(l);" in src and src.count("    dw_fence(comm_stream);") == 1
    (tmp_path / "nf").mkdir()
    (tmp_path / "nf" / "train.cu").write_text(src.replace("    dw_fence(comm_stream);", "    /* no fence */"))
    unfenced = build_cuda(tmp_path / "nf" / "train.cu", tmp_path / "nf" / "train", emulate=True, nccl=True)

    def ranks(prog, out, extra):
        argv = [
            "-i",
            pattern,
            "-e",
            str(mdir),
            "-b",
            "2",
            "-t",
            "16",
            "-d",
            "128",
            "-x",
            "3",
            "-l",
            "1e-3",
            "-c",
            "0",
            "-v",
            "0",
            "-z",
            "1",
            "-o",
            str(out),
        ]
        port, pipe = free_port(), subprocess.PIPE
        envs = [clean_env({**launcher_env("torchrun", q, 2, port), "OMP_NUM_THREADS": "1", **extra}) for q in (0, 1)]
        procs = [subprocess.Popen([str(prog), *argv], env=e, stdout=pipe, stderr=pipe, text=True) for e in envs]
        outs = [p.communicate(timeout=300) for p in procs]
        assert all(p.returncode == 0 for p in procs), outs[0][1][-3000:]
        return losses_by_step(out)

    want = ranks(tmp_path / "b" / "train", tmp_path / "one", {"LLMGEN_DW_STREAM": "0"})
    assert len(want) == 3
    side = {"LLMGEN_EMU_DEFER_STREAMS": "side"}
    assert ranks(tmp_path / "b" / "train", tmp_path / "side", side) == want
    assert ranks(unfenced, tmp_path / "nf-side", side) != want
