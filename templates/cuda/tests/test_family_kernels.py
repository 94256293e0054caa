"""The CUDA kernel families of templates/cuda/*.cuh, each compiled ALONE (not through a generated program)
with g++ through the emulation header, run on small shapes and checked against numpy (float64).

A driver program `<family>_test.cu` beside this file includes prelude.cuh (what train.cu puts before its
kernels) and the one family header, instantiates its templates at test shapes and runs them on raw files
this test writes (`prog CASE DIR`). The generated programs instantiate the same templates, so what passes
here is what they run; the trainer tests check the whole programs. No GPU needed."""

from __future__ import annotations

import pathlib
import subprocess
import sys

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
CUDA_TEMPLATES = HERE.parent  # templates/cuda: the family headers and device.cuh
EMULATE = CUDA_TEMPLATES / "emulate"
sys.path.insert(0, str(EMULATE / "tests"))

from emu_helpers import GXX_FLAGS, cuda_include, max_report, run_program  # noqa: E402


@pytest.fixture(scope="module")
def build(tmp_path_factory):
    """name -> the driver <name>_test.cu built with g++ -Wall -Wextra -Werror (the emulation's headers as
    system headers, so the warnings checked are the family header's; device.cuh's helpers a driver does not
    call are not warned about), once per module."""
    if cuda_include() is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found: the emulation needs them")
    built: dict[str, pathlib.Path] = {}

    def get(name: str, *defines: str) -> pathlib.Path:
        if name not in built:
            out = tmp_path_factory.mktemp(name) / name
            cmd = [
                "g++",
                *GXX_FLAGS,
                "-fopenmp",
                "-Wall",
                "-Wextra",
                "-Werror",
                "-Wno-unused-function",
                f"-isystem{EMULATE}",
                f"-I{CUDA_TEMPLATES}",
                f"-I{HERE}",
                f"-I{cuda_include()}",
                *defines,
                str(HERE / f"{name}_test.cu"),
                "-o",
                str(out),
                "-lm",
            ]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            assert proc.returncode == 0, f"g++ failed to build {name}:\n{proc.stdout}{proc.stderr}"
            built[name] = out
        return built[name]

    return get


def attention_reference(q, k, v, dy, scale):
    """causal grouped-query attention, float64: q (B,T,NH,HD), k and v (B,T,KV,HD), dy like q.
    Returns y, lse (B,NH,T), dq, dk, dv."""
    B, T, NH, HD = q.shape
    R = NH // k.shape[2]
    ke, ve = np.repeat(k, R, axis=2), np.repeat(v, R, axis=2)  # query head h reads K/V head h // R
    s = np.einsum("bthd,bshd->bhts", q, ke) * scale
    s = np.where(np.tril(np.ones((T, T), bool)), s, -np.inf)
    lse = np.log(np.exp(s - s.max(-1, keepdims=True)).sum(-1)) + s.max(-1)
    p = np.exp(s - lse[..., None])
    y = np.einsum("bhts,bshd->bthd", p, ve)
    dp = np.einsum("bthd,bshd->bhts", dy, ve)
    ds = p * (dp - (dp * p).sum(-1, keepdims=True)) * scale
    dq = np.einsum("bhts,bshd->bthd", ds, ke)
    dke = np.einsum("bhts,bthd->bshd", ds, q)
    dve = np.einsum("bhts,bthd->bshd", p, dy)
    Bk, Tk, KV = k.shape[:3]
    return y, lse, dq, dke.reshape(Bk, Tk, KV, R, HD).sum(3), dve.reshape(Bk, Tk, KV, R, HD).sum(3)


def check(name: str, got: np.ndarray, ref: np.ndarray, rel: float) -> None:
    """max |got - ref| within rel of ref's largest magnitude (bf16 outputs and bf16 p, ds inside)"""
    d = max_report(name, got, ref)
    assert d <= rel * float(np.max(np.abs(ref))), f"{name}: max |diff| {d:.3g}, max |ref| {np.max(np.abs(ref)):.3g}"


@pytest.mark.parametrize("case,B,T,NH,KV,HD", [("gqa", 2, 40, 4, 2, 18), ("mha", 1, 33, 2, 2, 16)])
def test_attention_cuda_cores_against_numpy(build, tmp_path, case, B, T, NH, KV, HD):
    """attention.cuh in fp32: grouped heads whose channels are split over 4 threads with a ragged last
    slot, and one thread per row of GPT-2's packed qkv; T not a multiple of the tiles"""
    rng = np.random.default_rng(12)
    prog = build("attention", "-DLLMGEN_BF16=0")
    C, KC = NH * HD, KV * HD
    if case == "mha":
        qkv = rng.standard_normal((B, T, C + 2 * KC)).astype(np.float32)
        inputs = {"q": qkv}
        q, k, v = qkv[..., :C], qkv[..., C : C + KC], qkv[..., C + KC :]
    else:
        q, k, v = (rng.standard_normal((B, T, n)).astype(np.float32) for n in (C, KC, KC))
        inputs = {"q": q, "k": k, "v": v}
    dy = rng.standard_normal((B, T, C)).astype(np.float32)
    inputs["dy"] = dy
    run = run_program(prog, case, tmp_path, inputs)
    shape_q, shape_k = (B, T, NH, HD), (B, T, KV, HD)
    f64 = [a.astype(np.float64) for a in (q, k, v, dy)]
    y, lse, dq, dk, dv = attention_reference(
        f64[0].reshape(shape_q),
        f64[1].reshape(shape_k),
        f64[2].reshape(shape_k),
        f64[3].reshape(shape_q),
        1.0 / np.sqrt(HD),
    )

    def out(name):
        return run.out(name, np.float32).astype(np.float64)

    check("y", out("y").reshape(shape_q), y, 1e-5)
    check("lse", out("lse").reshape(B, NH, T), lse, 1e-5)
    dq_rows = out("dq").reshape(B, T, -1)
    check("dq", dq_rows[..., :C].reshape(shape_q), dq, 1e-5)
    got_dk = dq_rows[..., C : C + KC] if case == "mha" else out("dk")
    got_dv = dq_rows[..., C + KC :] if case == "mha" else out("dv")
    check("dk", got_dk.reshape(shape_k), dk, 1e-5)
    check("dv", got_dv.reshape(shape_k), dv, 1e-5)


def test_layernorm_against_numpy(build, tmp_path):
    """kernels/norms.cuh's LayerNorm as train.cu pastes it, in fp32: residual forward (sum, out, mean, rstd)
    and the residual backward (dx + dres, dw accumulated, db overwritten) with rows strided over fewer blocks
    than row groups"""
    rng = np.random.default_rng(13)
    prog = build("layernorm", "-DLLMGEN_BF16=0")
    N, C, eps = 37, 40, 1e-5
    x, r, dy, dres = (rng.standard_normal((N, C)).astype(np.float32) for _ in range(4))
    w, b, dw0 = (rng.standard_normal(C).astype(np.float32) for _ in range(3))
    run = run_program(prog, "residual", tmp_path, {"x": x, "r": r, "w": w, "b": b, "dy": dy, "dres": dres, "dw0": dw0})
    s = (x + r).astype(np.float64)  # fp32 sum, exact in float64
    mean = s.mean(1)
    rstd = 1.0 / np.sqrt(((s - mean[:, None]) ** 2).mean(1) + eps)
    xh = (s - mean[:, None]) * rstd[:, None]
    g, w64 = dy.astype(np.float64), w.astype(np.float64)
    gw = g * w64
    dx = rstd[:, None] * (gw - gw.mean(1, keepdims=True) - xh * (gw * xh).mean(1, keepdims=True)) + dres

    def out(name, shape):
        return run.out(name, np.float32).astype(np.float64).reshape(shape)

    check("sum", out("sum", (N, C)), (x + r).astype(np.float64), 1e-7)
    check("out", out("out", (N, C)), xh * w64 + b, 1e-5)
    check("mean", out("mean", (N,)), mean, 1e-5)
    check("rstd", out("rstd", (N,)), rstd, 1e-5)
    check("dx", out("dx", (N, C)), dx, 1e-5)
    check("dw", out("dw", (C,)), dw0 + (g * xh).sum(0), 1e-5)
    check("db", out("db", (C,)), g.sum(0), 1e-5)


def test_rmsnorm_against_numpy(build, tmp_path):
    """kernels/norms.cuh's RMSNorm as train.cu pastes it, in fp32: residual forward (sum, out, rstd) and the
    residual backward (dx + dres, dw accumulated) with a ragged last vector and rows strided over fewer blocks"""
    rng = np.random.default_rng(14)
    prog = build("rows", "-DLLMGEN_BF16=0")
    N, C, eps = 37, 40, 1e-5
    x, r, dy, dres = (rng.standard_normal((N, C)).astype(np.float32) for _ in range(4))
    w, dw0 = (rng.standard_normal(C).astype(np.float32) for _ in range(2))
    run = run_program(prog, "rmsnorm", tmp_path, {"x": x, "r": r, "w": w, "dy": dy, "dres": dres, "dw0": dw0})
    s = (x + r).astype(np.float64)
    rstd = 1.0 / np.sqrt((s * s).mean(1) + eps)
    xh = s * rstd[:, None]
    g, w64 = dy.astype(np.float64), w.astype(np.float64)
    gw = g * w64
    dx = rstd[:, None] * (gw - xh * (gw * xh).mean(1, keepdims=True)) + dres

    def out(name, shape):
        return run.out(name, np.float32).astype(np.float64).reshape(shape)

    check("sum", out("sum", (N, C)), s, 1e-7)
    check("out", out("out", (N, C)), xh * w64, 1e-5)
    check("rstd", out("rstd", (N,)), rstd, 1e-5)
    check("dx", out("dx", (N, C)), dx, 1e-5)
    check("dw", out("dw", (C,)), dw0 + (g * xh).sum(0), 1e-5)


def test_swiglu_against_numpy(build, tmp_path):
    """swiglu.cuh in fp32: h = silu(g) * u and its two gradients"""
    rng = np.random.default_rng(15)
    prog = build("rows", "-DLLMGEN_BF16=0")
    g, u, dh = (rng.standard_normal((5, 24)).astype(np.float32) for _ in range(3))
    run = run_program(prog, "swiglu", tmp_path, {"g": g, "u": u, "dh": dh})
    g64, u64, dh64 = (a.astype(np.float64) for a in (g, u, dh))
    sig = 1.0 / (1.0 + np.exp(-g64))
    check("h", run.out("h", np.float32).reshape(5, 24), g64 * sig * u64, 1e-6)
    check("dg", run.out("dg", np.float32).reshape(5, 24), dh64 * u64 * sig * (1 + g64 * (1 - sig)), 1e-6)
    check("du", run.out("du", np.float32).reshape(5, 24), dh64 * g64 * sig, 1e-6)


def test_rope_against_numpy(build, tmp_path):
    """rope.cuh in fp32: the rotate-half rotation by t * inv_freq (t the position in its sequence) and its
    transpose"""
    rng = np.random.default_rng(16)
    prog = build("rows", "-DLLMGEN_BF16=0")
    N, T, NH, HD = 6, 3, 3, 8
    x = rng.standard_normal((N, NH, HD)).astype(np.float32)
    freq = (1.0 / 10.0 ** (np.arange(HD // 2) / (HD // 2))).astype(np.float32)
    run = run_program(prog, "rope", tmp_path, {"x": x, "freq": freq})
    a = (np.arange(N) % T)[:, None, None] * freq.astype(np.float64)[None, None, :]
    x1, x2 = x[..., : HD // 2].astype(np.float64), x[..., HD // 2 :].astype(np.float64)
    y = np.concatenate([x1 * np.cos(a) - x2 * np.sin(a), x2 * np.cos(a) + x1 * np.sin(a)], -1)
    dx = np.concatenate([x1 * np.cos(a) + x2 * np.sin(a), x2 * np.cos(a) - x1 * np.sin(a)], -1)
    check("y", run.out("y", np.float32).reshape(N, NH, HD), y, 1e-6)
    check("dx", run.out("dx", np.float32).reshape(N, NH, HD), dx, 1e-6)


def test_xent_against_numpy(build, tmp_path):
    """kernels/xent.cuh as train.cu pastes it, in fp32: the losses over the first V of VP columns, the
    backward from per-row dlosses (zero in the padding), and the fused softmax + cross-entropy writing its
    gradient over the logits"""
    rng = np.random.default_rng(17)
    prog = build("rows", "-DLLMGEN_BF16=0")
    N, V, VP = 7, 70, 72
    z = rng.standard_normal((N, VP)).astype(np.float32)
    t = rng.integers(0, V, N).astype(np.int32)
    dl = rng.standard_normal(N).astype(np.float32)
    dloss = np.array([1.5], np.float32)
    run = run_program(prog, "xent", tmp_path, {"z": z, "t": t, "dl": dl, "dloss": dloss})
    zv = z[:, :V].astype(np.float64)
    lse = np.log(np.exp(zv - zv.max(1, keepdims=True)).sum(1)) + zv.max(1)
    loss = lse - zv[np.arange(N), t]
    p = np.exp(zv - lse[:, None])
    p[np.arange(N), t] -= 1.0
    pad = np.zeros((N, VP - V))
    check("loss", run.out("loss", np.float32), loss, 1e-6)
    check("loss2", run.out("loss2", np.float32), loss, 1e-6)
    check("dz", run.out("dz", np.float32).reshape(N, VP), np.concatenate([p * dl[:, None], pad], 1), 1e-6)
    check("dz2", run.out("dz2", np.float32).reshape(N, VP), np.concatenate([p * 1.5 / N, pad], 1), 1e-6)
