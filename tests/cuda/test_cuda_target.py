"""GPT-2 on the CUDA target, run on the CPU: `llmgen build --target cuda --emulate` compiles the SAME
train.cu that nvcc builds through the emulation headers (templates/cuda/emulate/: kernels as fibers,
cuBLASLt as a CPU GEMM), and the binary is checked against the PyTorch oracle (tests/oracle.py) as a
user drives it.

Emulation is ~40x slower than plain C, so the models are tiny and runs short.

Kernel paths the tests cover: every kernel of the fused and the unfused schedule, recompute levels
0/1/2, the cuBLASLt fused epilogues (GELU_AUX_BIAS, BIAS, DGELU, BGRADB) and, built with
-DLLMGEN_NO_FUSED_EPILOGUES, the fallback kernels that run when cuBLASLt lacks one. Attention has
two paths: fp32 programs run the CUDA-core flash kernel only (test_emitted_source checks that an
fp32 program has no tensor-core intrinsics); bf16 programs run the tensor-core (wmma) attention
when T is a multiple of 64 (configs tiny and tc) and the CUDA-core kernel otherwise (wide).

Tolerances, fp32 (the emulated kernels and PyTorch sum in different orders; measured values in
brackets, worst over the configs):
  logits            3e-6 abs     values of size ~1-5, a few float32 ulps               [3.6e-7]
  loss              2e-6 rel                                                            [2.0e-7]
  grads             2e-5 rel     to each tensor's largest |value|                       [9.3e-7]
  10 AdamW losses   1e-4 rel     the issue's bound                                      [2.0e-7]
  grad norms        1e-4 rel                                                            [2.5e-7]
  -d, recompute 1/2 vs plain: 1e-6 rel, and bit-identical for recompute (the recompute kernels
                    use the cuBLASLt epilogue's own expressions)                       [0]

Tolerances, bf16 (parameters and activations rounded to bf16, 8 significant bits: one rounding
is up to 2^-9 = 2e-3 relative; PyTorch is the fp32 oracle; bounds 4-20x the measured error):
  logits            2e-2 abs     a logit is a dot product of n_embd bf16 values after a dozen
                                 bf16 roundings of the residual stream; logits are O(1)  [5.3e-3]
  loss              1e-3 rel     the mean of B*T per-token losses averages the roundings  [4.4e-5]
  grads             5e-2 rel     to each tensor's largest |value|: activation gradients are
                                 bf16 and every GEMM input is rounded: a few bf16 ulps of
                                 the largest value per element                           [1.4e-2]
  10 AdamW losses   5e-4 rel     means over B*T tokens; Adam's normalised steps keep the
                                 weights within a bf16 ulp or so of the fp32 run         [5.7e-5]
  grad norms        1e-2 rel     a sum of squares of bf16-computed gradients              [2.7e-3]
  -d, recompute 1/2 vs plain: 5e-4 rel: other rounding points (recompute 1 takes GELU of the
                                 bf16 pre-activation, not of the fp32 GEMM result; -d sums
                                 fp32 weight gradients in another order)                 [2.3e-5]
"""

import re
import subprocess

import numpy as np
import pytest

import oracle
from llmgen.checkpoint import read_safetensors
from trainer_checks import Checks, read_log, run_binary

EMU = ("--target", "cuda", "--emulate")

CONFIGS = {
    # name: (n_layer, n_head, n_embd, vocab, n_positions, B, T)
    "tiny": (2, 2, 32, 100, 64, 4, 64),
    "odd": (1, 1, 48, 129, 32, 3, 31),      # one head, HD=48, odd vocab/T: padding and loop tails
    "wide": (3, 4, 64, 300, 128, 2, 100),   # T=100: several 64-row query blocks, partial 32-row tiles
    # bf16: the tensor-core attention (T a multiple of 64) with GPT-2's head size, 3 key tiles
    "tc": (2, 2, 128, 300, 256, 2, 192),
}
QK_SCALE = {"tc": 8.0}   # sharp attention (scores ~60x the init's): the online-softmax rescale matters
FP32_CONFIGS = ("tiny", "odd", "wide")
BF16_CONFIGS = ("tiny", "wide", "tc")   # tiny and tc run the tensor-core attention, wide the CUDA-core one

TOL = {
    "fp32": dict(logits=3e-6, loss=2e-6, grads=2e-5, losses=1e-4, norms=1e-4),
    "bf16": dict(logits=2e-2, loss=1e-3, grads=5e-2, losses=5e-4, norms=1e-2),
}
CHECKS = Checks(TOL)
note, train, check_dump, check_losses = CHECKS.note, CHECKS.train, CHECKS.check_dump, CHECKS.check_losses






@pytest.fixture(scope="module")
def models(tmp_path_factory):
    out = {}
    for name, (L, H, C, V, P, B, T) in CONFIGS.items():
        d = tmp_path_factory.mktemp(name)
        oracle.make_gpt2_model_dir(d / "model", n_layer=L, n_head=H, n_embd=C, vocab_size=V, n_positions=P, seed=7,
                                   qk_scale=QK_SCALE.get(name, 1.0))
        pat = oracle.random_shards(d / "data", vocab_size=V, n_tokens=4000, n_shards=2, seed=2)
        out[name] = dict(dir=d, model=d / "model", cfg=d / "model" / "config.json", pattern=pat, B=B, T=T, V=V)
    return out


@pytest.fixture(scope="module")
def oracle_runs(models):
    """The PyTorch step-0 dump and 10 AdamW steps per config, computed once."""
    cache = {}

    def get(name):
        if name not in cache:
            m = models[name]
            cache[name] = dict(
                dump=oracle.step0_dump(m["model"], m["pattern"], m["B"], m["T"]),
                train=oracle.train_gpt2(m["model"], m["pattern"], m["B"], m["T"], 10, 1e-3, schedule="constant"))
        return cache[name]
    return get










# ------------------------------------------------------------------------------------------
# fp32 and bf16 against PyTorch

@pytest.mark.parametrize("name", FP32_CONFIGS)
def test_fp32_matches_pytorch(name, models, oracle_runs, build_cache, tmp_path):
    m, ref = models[name], oracle_runs(name)
    binary = build_cache(m["cfg"], *EMU)
    check_dump(binary, m, ref["dump"], "fp32", tmp_path)
    log = train(binary, m, tmp_path / "run")
    check_losses(log, ref["train"], "fp32")
    assert all("mfu" in r and r["peak_mem_bytes"] > 0 for r in log)   # MFU is null: no peak for a CPU
    # the final checkpoint loads in transformers and scores the batch step 11 would read as PyTorch does
    from transformers import GPT2LMHeadModel
    ckpt = tmp_path / "run" / (tmp_path / "run" / "latest").read_text().strip()
    model = GPT2LMHeadModel.from_pretrained(ckpt)
    x, y = list(oracle.batches(m["pattern"], m["B"], m["T"], 11))[-1]
    got = oracle.eval_loss(model, x, y)
    assert abs(got - ref["train"]["next_batch_loss"]) <= 1e-4 * ref["train"]["next_batch_loss"]


@pytest.mark.parametrize("name", BF16_CONFIGS)
def test_bf16_matches_pytorch(name, models, oracle_runs, build_cache, tmp_path):
    m, ref = models[name], oracle_runs(name)
    binary = build_cache(m["cfg"], "--dtype", "bf16", *EMU)
    assert "typedef __nv_bfloat16 floatX;" in (binary.parent / "train.cu").read_text()
    check_dump(binary, m, ref["dump"], "bf16", tmp_path)
    check_losses(train(binary, m, tmp_path / "run"), ref["train"], "bf16")
    # the checkpoint holds the fp32 master weights
    from transformers import GPT2LMHeadModel
    ckpt = tmp_path / "run" / (tmp_path / "run" / "latest").read_text().strip()
    x, y = list(oracle.batches(m["pattern"], m["B"], m["T"], 11))[-1]
    got = oracle.eval_loss(GPT2LMHeadModel.from_pretrained(ckpt), x, y)
    assert abs(got - ref["train"]["next_batch_loss"]) <= TOL["bf16"]["losses"] * ref["train"]["next_batch_loss"]


# ------------------------------------------------------------------------------------------
# the same losses by other routes: accumulation, recompute, unfused, no fused epilogues, C twin

@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_grad_accumulation_and_recompute_give_the_same_losses(dtype, models, build_cache, tmp_path):
    m = dict(models["tiny"])
    dt = ("--dtype", "bf16") if dtype == "bf16" else ()
    tol = 1e-6 if dtype == "fp32" else 5e-4
    base = build_cache(m["cfg"], *dt, *EMU)
    # B=4 in one micro-batch, or -d: two micro-batches of B=2 reading the same tokens
    m4 = dict(m, B=4, T=32)
    want = [r["train_loss"] for r in train(base, m4, tmp_path / "plain", steps=6)]
    m2 = dict(m, B=2, T=32)
    got = [r["train_loss"] for r in train(base, m2, tmp_path / "accum", "-d", 128, steps=6)]
    np.testing.assert_allclose(got, want, rtol=tol)
    note(f"{dtype} -d vs plain rel", np.max(np.abs(np.array(got) - want) / np.array(want)))
    for level in (1, 2):
        binary = build_cache(m["cfg"], *dt, "--recompute", str(level), *EMU)
        got = [r["train_loss"] for r in train(binary, m4, tmp_path / f"r{level}", steps=6)]
        note(f"{dtype} recompute {level} vs 0 rel", np.max(np.abs(np.array(got) - want) / np.array(want)))
        np.testing.assert_allclose(got, want, rtol=tol)
        if dtype == "fp32":       # the recompute kernels use the epilogue's own expressions
            assert got == want


def test_unfused_and_fallback_epilogues_train_the_same(models, build_cache, tmp_path):
    from pathlib import Path

    from llmgen.runtime.build import build_cuda
    m = models["wide"]
    base = build_cache(m["cfg"], *EMU)
    want = [r["train_loss"] for r in train(base, m, tmp_path / "fused", steps=4)]
    unfused = build_cache(m["cfg"], "--no-fuse", *EMU)
    got = [r["train_loss"] for r in train(unfused, m, tmp_path / "unfused", steps=4)]
    np.testing.assert_allclose(got, want, rtol=1e-6)
    # the kernels a program runs when cuBLASLt has no algorithm for a fused epilogue
    plain = build_cuda(base.parent / "train.cu", tmp_path / "train_plain", emulate=True,
                       extra_flags=["-DLLMGEN_NO_FUSED_EPILOGUES"])
    got = [r["train_loss"] for r in train(Path(plain), m, tmp_path / "plain", steps=4)]
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_emulated_and_cpu_twin_agree(models, build_cache, tmp_path):
    m = models["wide"]
    cuda = build_cache(m["cfg"], *EMU)
    c = build_cache(m["cfg"])
    a = train(cuda, m, tmp_path / "cuda", steps=5)
    b = train(c, m, tmp_path / "c", steps=5)
    np.testing.assert_allclose([r["train_loss"] for r in a], [r["train_loss"] for r in b], rtol=1e-5)
    np.testing.assert_allclose([r["grad_norm"] for r in a], [r["grad_norm"] for r in b], rtol=1e-4)
    for binary, d in ((cuda, "zc"), (c, "zt")):
        run_binary(binary, "-e", m["model"], "-i", m["pattern"], "-b", m["B"], "-t", m["T"], "--dump", tmp_path / d)
    x, y = read_safetensors(tmp_path / "zc"), read_safetensors(tmp_path / "zt")
    for k in y:
        assert np.abs(x[k] - y[k]).max() <= 2e-5 * (np.abs(y[k]).max() + 1e-30), k


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_deterministic_and_resume_is_bit_exact(dtype, models, build_cache, tmp_path):
    """Two runs log the same bits (no float atomics); a bf16 run resumed from a checkpoint too (the
    bf16 parameters are a pure function of the fp32 master: hash-seeded stochastic rounding)."""
    m = dict(models["tiny"], T=32)
    dt = ("--dtype", "bf16") if dtype == "bf16" else ()
    binary = build_cache(m["cfg"], *dt, *EMU)
    a = train(binary, m, tmp_path / "a", steps=6)
    b = train(binary, m, tmp_path / "b", "-n", 3, steps=6)
    assert [(r["train_loss"], r["grad_norm"]) for r in a] == [(r["train_loss"], r["grad_norm"]) for r in b]
    (tmp_path / "b" / "latest").write_text("ckpt_00000003\n")
    run_binary(binary, "-e", m["model"], "-i", m["pattern"], "-b", m["B"], "-t", m["T"], "-x", 6, "-l", "1e-3",
               "-k", "constant", "-c", 0, "-v", 0, "-n", 3, "-y", 1, "-o", tmp_path / "b")
    resumed = {r["step"]: (r["train_loss"], r["grad_norm"]) for r in read_log(tmp_path / "b")}
    assert resumed == {r["step"]: (r["train_loss"], r["grad_norm"]) for r in a}


def test_llmc_flags_on_the_bf16_build(models, build_cache, tmp_path):
    """llm.c's -w 0 (no fp32 master weights) is refused by name on a bf16 build, which always keeps them;
    -w 1 and -z 1 (ZeRO stage, one process) train."""
    m = models["tiny"]
    binary = build_cache(m["cfg"], "--dtype", "bf16", *EMU)
    common = ["-e", m["model"], "-i", m["pattern"], "-b", m["B"], "-t", m["T"], "-x", 1, "-v", 0]
    r = subprocess.run([str(binary), *map(str, common), "-w", "0"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 1 and "bf16 build always keeps fp32 master weights" in r.stderr, r.stderr
    r = run_binary(binary, *common, "-w", 1, "-z", 1)
    assert "step 1/1" in r.stdout


# ------------------------------------------------------------------------------------------
# the source a user reads

def test_emitted_source(models, build_cache):
    src = (build_cache(models["tiny"]["cfg"], *EMU).parent / "train.cu").read_text()
    assert src.startswith("/* @generated by llmgen")
    for section in ("// runtime", "// model constants", "// memory layout", "// device helpers", "// kernels",
                    "// the schedule", "// target hooks", "// the trainer"):
        assert section in src, section
    assert "/* residual_layernorm: h0.residual2 (B,T,32)" in src and "/* attention: h0.atty (B,T,32)" in src
    # every launch through the macro, dynamic shared memory only through its macro
    body = src[src.index("// kernels"):]
    assert "<<<" not in body and "extern __shared__" not in body
    assert body.count("LLMGEN_LAUNCH(") > 20 and "LLMGEN_DYNAMIC_SMEM(float, smem)" in body
    assert "atomicAdd" not in src                    # deterministic: no atomics at all
    assert not re.search(r"\b(wmma|mma_sync|asm\s*\(|asm volatile)", body)
    print("fp32 attention path: plain CUDA-core flash kernels (no tensor-core intrinsics in the program)")
    for epi in ("EPILOGUE_GELU_AUX_BIAS", "EPILOGUE_BIAS", "EPILOGUE_DGELU", "EPILOGUE_BGRADB"):
        assert "CUBLASLT_" + epi in body, epi
    assert "_v2" not in src and "kernel3" not in src


def test_zz_report_measured_errors():
    """Prints the worst measured error per quantity (run with -s to see it)."""
    CHECKS.report()
