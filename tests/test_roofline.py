"""The roofline model (llmgen/roofline.py) against counts made here from the model dimensions alone:
the textbook matmul FLOPs (6 x matmul parameters x tokens), causal attention's pairs, AdamW's bytes
per parameter, the bytes of one GEMM, and the trainer's MFU convention."""

import subprocess
import sys

import pytest

from llmgen.compiler import compile_graph
from llmgen.roofline import GPUS, OP_TABLE, predict, roofline_report
from llmgen.spec import PRESETS, GPT2Spec

GPT2 = PRESETS["gpt2"].replace(dtype="bf16")
B, T = 16, 1024


def by_class(p, cls):
    return [k for k in p.kernels if k.cls == cls]


def gpt2_matmul_params(L, C, Vp):
    """Per layer: qkv 3C*C, attention projection C*C, MLP 4C*C twice; plus the tied classifier."""
    return L * (3 * C * C + C * C + 4 * C * C + 4 * C * C) + Vp * C


def gpt2_params(L, C, Vp, P):
    """Every parameter: wte, wpe, per layer 2 layernorms (4C), qkv (3C^2 + 3C), proj (C^2 + C),
    fc (4C^2 + 4C), fc proj (4C^2 + C); the final layernorm (2C)."""
    return Vp * C + P * C + L * (4 * C + 3 * C * C + 3 * C + C * C + C + 4 * C * C + 4 * C + 4 * C * C + C) + 2 * C


@pytest.fixture(scope="module")
def gpt2_bf16():
    return predict(GPT2, B, T, "h200")


def test_gpt2_gemm_flops_are_6_x_matmul_params_x_tokens(gpt2_bf16):
    L, C, Vp = 12, 768, 50304  # GPT-2 124M; the classifier runs over the padded vocabulary
    textbook = 2 * B * T * gpt2_matmul_params(L, C, Vp)  # forward: 2 FLOPs per multiply-add
    fwd = sum(k.flops for k in by_class(gpt2_bf16, "gemm fwd"))
    bwd = sum(k.flops for k in by_class(gpt2_bf16, "gemm bwd"))
    assert fwd == textbook
    assert bwd == 2 * textbook  # dX and dW: two matmuls of the forward's size
    assert fwd + bwd == 6 * B * T * (84_934_656 + 38_633_472)  # 6 N D: N = 12 * 12 C^2 layer weights + Vp C


def test_gpt2_attention_flops_causal_halved(gpt2_bf16):
    L, C = 12, 768
    pairs = T * (T + 1) // 2  # (query, key <= query) per head and sequence
    fwd = sum(k.flops for k in by_class(gpt2_bf16, "attention fwd"))
    bwd = sum(k.flops for k in by_class(gpt2_bf16, "attention bwd"))
    assert fwd == L * 2 * (2 * B * pairs * C)  # QK^T and PV over all heads (NH * hd = C)
    assert bwd == 3.5 * fwd  # the FA2-class kernels' seven matmuls (two recomputed so that dq needs no atomics)
    # MFU convention: 6N + 12 L C T per token, attention not halved (the trainer's log uses the same)
    assert gpt2_bf16.model_flops == B * T * (6 * gpt2_matmul_params(L, C, 50304) + 12 * L * C * T)


def test_model_flops_match_the_trainers_mfu_formula():
    # the trainer logs MFU from FLOPS_PER_TOKEN + FLOPS_PER_TOKEN_T * T (lower.graph_flops); the
    # roofline counts 6N + 12 L C T: the two must be the same number
    from llmgen.codegen.lower import flops_per_token, graph_flops

    g, _ = compile_graph(GPT2, 1, 1, dtype="bf16")
    p = predict(GPT2, 4, 256, "h100")
    assert graph_flops(g)[1] == 12 * 12 * 768
    assert p.model_flops == 4 * 256 * flops_per_token(g, 256)


def test_adamw_bytes_per_parameter(gpt2_bf16):
    n = gpt2_params(12, 768, 50304, 1024)
    assert gpt2_bf16.n_params == n
    (adamw,) = [k for k in gpt2_bf16.kernels if k.op == "adamw_all"]
    # bf16: read master, grad, m, v (4 x 4) and write master, m, v (3 x 4) plus the bf16 weight (2)
    assert adamw.bytes == n * (4 * 4 + 3 * 4 + 2)
    (gn,) = [k for k in gpt2_bf16.kernels if k.op == "grad_norm"]
    assert gn.bytes == 4 * n + 4  # reads every fp32 gradient once, writes the norm
    fp32 = predict(GPT2, 2, 64, "h200", dtype="fp32")
    (adamw,) = [k for k in fp32.kernels if k.op == "adamw_all"]
    assert adamw.bytes == n * (4 * 4 + 3 * 4)  # fp32: the parameter is its own master


def test_gemm_and_xent_bytes(gpt2_bf16):
    C, M, Vp = 768, B * T, 50304
    k = next(k for k in gpt2_bf16.kernels if k.op == "linear" and k.name == "h0.qkv")
    assert k.bytes == 2 * (M * C + 3 * C * C + 3 * C + M * 3 * C)  # x, w, bias in; qkv out, all bf16
    k = next(k for k in gpt2_bf16.kernels if k.op == "linear_dw" and k.name.startswith("h0.dattn.c_attn.w"))
    # dy (M, 3C) and x (M, C) bf16 in; dW (3C, C) and db (3C) fp32 accumulated: read + write
    assert k.bytes == 2 * (M * 3 * C + M * C) + 8 * (3 * C * C + 3 * C)
    (x,) = by_class(gpt2_bf16, "softmax-xent")
    # bf16 logits read, dlogits written over them; int32 targets in, fp32 losses out (+ the fp32 dloss scalar)
    assert x.bytes == 2 * M * Vp * 2 + 4 * M + 4 * M + 4


def test_llama_gemm_flops_and_gqa_attention():
    spec = PRESETS["llama3.1-8b"].replace(dtype="bf16")
    b, t = 1, 512
    p = predict(spec, b, t, "h200")
    C, L, NH, KV, hd, F, Vp = 4096, 32, 32, 8, 128, 14336, 128256
    per_layer = C * NH * hd + 2 * C * KV * hd + NH * hd * C + 3 * C * F  # q, k, v, o, gate, up, down
    assert sum(k.flops for k in p.kernels if k.cls.startswith("gemm")) == 6 * b * t * (L * per_layer + Vp * C)
    fwd = sum(k.flops for k in by_class(p, "attention fwd"))
    assert fwd == L * 2 * 2 * b * (t * (t + 1) // 2) * NH * hd  # GQA: the query heads do the work
    assert {k.cls for k in p.kernels} >= {
        "gemm fwd",
        "gemm bwd",
        "attention fwd",
        "attention bwd",
        "norms",
        "softmax-xent",
        "embedding",
        "adamw",
        "elementwise",
    }


@pytest.mark.parametrize("name", ["gpt2", "llama3-tiny"])
@pytest.mark.parametrize("fuse,recompute", [(True, 0), (True, 2), (False, 0)])
def test_every_op_has_a_row_in_op_table(name, fuse, recompute):
    """A renamed or new op must get its row (else it would be costed as a plain stream)."""
    g, _ = compile_graph(PRESETS[name], 2, 16, fuse=fuse, recompute=recompute)
    assert {n.op for n in g.nodes} - set(OP_TABLE) == set()


def test_step_time_is_the_sum_of_per_kernel_maxima(gpt2_bf16):
    gpu = GPUS["h200"]
    total = 0.0
    for k in gpt2_bf16.kernels:
        rate = gpu.achievable_bf16 if k.matmul else gpu.achievable_fp32
        total += max(k.flops / rate, k.bytes / gpu.achievable_bps)
    assert gpt2_bf16.step_s == pytest.approx(total, rel=1e-12)
    assert gpt2_bf16.tokens_per_s == pytest.approx(B * T / total, rel=1e-12)
    shares = gpt2_bf16.classes()
    assert sum(c["share"] for c in shares.values()) == pytest.approx(1.0, rel=1e-9)
    # GPT-2 124M at B=16, T=1024 is GEMM-bound on an H200: the compute-bound GEMMs hold most of the step
    assert shares["gemm fwd"]["share"] + shares["gemm bwd"]["share"] > 0.6


def test_grad_accumulation_repeats_micro_batch_kernels_only():
    one = predict(GPT2, 2, 128, "h200")
    four = predict(GPT2, 2, 128, "h200", accum=4)
    opt = sum(k.seconds for k in one.kernels if k.per_step)
    assert four.step_s == pytest.approx(4 * (one.step_s - opt) + opt, rel=1e-12)


def test_report_and_cli():
    text = roofline_report(GPT2, B, T, "h200", "bf16")
    assert "ms/step" in text and "attention" in text and "| step |" in text
    r = subprocess.run(
        [sys.executable, "-m", "llmgen.roofline", "gpt2", "--gpu", "h200", "-b", "16", "-t", "1024", "--dtype", "bf16"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == text.strip()
    for bad, msg in ((["--gpu", "v100"], "unknown GPU"), (["-t", "4096"], "max_seq_len"), (["-b", "0"], ">= 1")):
        r = subprocess.run(
            [sys.executable, "-m", "llmgen.roofline", "gpt2", *bad], capture_output=True, text=True, timeout=120
        )
        assert r.returncode == 1 and msg in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1


def test_tiny_spec_reports():
    assert "ms/step" in roofline_report(
        GPT2Spec(n_layer=2, n_head=2, n_embd=64, vocab_size=100, max_seq_len=32), 2, 32, "a100", "fp32"
    )


def test_llmgen_inspect_gpu_prints_the_roofline():
    """`llmgen inspect SPEC --gpu NAME` adds the roofline to the report; an unknown GPU is a one-line error."""
    spec = PRESETS["gpt2-tiny"]
    r = subprocess.run(
        [sys.executable, "-m", "llmgen", "inspect", "gpt2-tiny", "-b", "4", "-t", "64", "--gpu", "h100"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    want = predict(spec, 4, 64, "h100", spec.dtype)
    assert f"predicted: {want.step_s * 1e3:.2f} ms/step" in r.stdout
    assert "| kernel class |" in r.stdout and "a prediction from the graph, not a measurement" in r.stdout
    r = subprocess.run(
        [sys.executable, "-m", "llmgen", "inspect", "gpt2-tiny", "--gpu", "h900"], capture_output=True, text=True
    )
    assert r.returncode == 1 and r.stderr.strip() == "error: unknown GPU 'h900' (known: a100, h100, h200)"
