"""templates/cuda/kernels/attention_fa2.cuh, run on the CPU through the emulation (fa2_attention.cu beside
this file, built with g++ -DLLMGEN_EMULATE), against a numpy float64 oracle computed from the same
bf16-rounded inputs; its shared-memory bank conflicts as the emulation counts them; its refusals of bad
arguments; and, where nvcc is installed, ptxas's resource use for sm_80 and sm_90a.

Inputs are sharpened: scores of standard deviation 6 plus a trend that raises later keys' scores for every
query by up to 30 over the sequence, so a row's maximum grows tile after tile and an output that missed one
online-softmax rescale would be off by far more than the bounds (test_sharpened_inputs_exercise_the_rescale
checks that on the numpy side).

TOLERANCE TABLE. Every output is compared elementwise with a first-order error bound built from the
roundings the kernels perform (u = 2^-8, bf16's unit roundoff: 8 significant bits; u32 = 2^-23, one fp32
ulp per addition, which also covers tensor cores that truncate their fp32 sums):
  | output | term                                   | why                                                  |
  | s (no output; feeds all) | HD u32 sum_d |q k| scale     | fp32 sum of HD exact bf16 x bf16 products (mma)      |
  | lse    | max_j ds + 8 u32 (1 + |lse|)           | the row's worst score error; ex2, log2, FMULs        |
  | P      | rel. ds + dlse + 8 u32 (1 + |s| + |lse|) | exp2 of (s c - lse c): its argument's errors         |
  | o      | u |o|                                  | rounding the output to bf16                          |
  |        | u sum_j P |v|                          | P rounded to bf16 to be mma's A operand              |
  |        | sum_j P eps_P (|v| + |o|) + T u32 ...  | P's fp32 error (normalisation: v - o), fp32 sums     |
  | D      | HD u32 sum_d |dout o|                  | fp32 sum, against rowsum(dout * o) of the kernel's o |
  | dS     | P eps_P |dP - D| + P (ddP + dD)        | P's error; dP's fp32 sum; D made from the bf16 o     |
  |        | + u |dS|                               | dS rounded to bf16 to be mma's A operand             |
  | dq, dk | scale sum |dS err| |k| (|q|) + u |out| | the dS errors through the products; bf16 output      |
  | dv     | sum_i P (eps_P + u) |dout| + u |dv|    | P's error and its bf16 rounding; bf16 output         |
  (plus T u32 times the sum of absolute products for every fp32 sum over keys or queries). The bounds
  are worst cases (absolute values summed), so the measured errors sit well below them: the test prints
  max |err| and max |err| / bound per output (pytest -s). The same cases run on a GPU where there is one
  (the "gpu" builds, skipped otherwise), against the same bounds.
"""

from __future__ import annotations

import json
import os
import pathlib
import re
import shutil
import subprocess
import sys
import zlib

import numpy as np
import pytest

HERE = pathlib.Path(__file__).resolve().parent
KERNELS = HERE.parent  # templates/cuda/kernels: attention_fa2.cuh
CUDA_TEMPLATES = KERNELS.parent  # templates/cuda: ptx.cuh
EMULATE = CUDA_TEMPLATES / "emulate"  # emulate.h and its parts
TESTIO = EMULATE / "tests" / "kernels"  # testio.h: the test programs' file I/O
HEADER = KERNELS / "attention_fa2.cuh"
DRIVER = HERE / "fa2_attention.cu"

sys.path.insert(0, str(EMULATE / "tests"))
from emu_helpers import GXX_FLAGS, bf16_to_f32, cuda_include, f32_to_bf16, gpu_arch, nvcc_path  # noqa: E402

U = 2.0**-8  # bf16 unit roundoff
U32 = 2.0**-23  # one fp32 ulp per addition: the unit roundoff 2^-24, doubled for accumulators that truncate
TILE = 64  # the key tile of the launchers' forward (Fa2Tiles<HD>::FWD_BN)


# ---- build and run -------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def fa2(tmp_path_factory) -> pathlib.Path:
    """fa2_attention.cu built through the emulation headers, warning-free under -Wall -Wextra."""
    if shutil.which("g++") is None:
        pytest.skip("g++ not found")
    if cuda_include() is None:
        pytest.skip("CUDA headers (cuda_runtime.h) not found")
    out = tmp_path_factory.mktemp("fa2") / "fa2_attention"
    cmd = [
        "g++",
        *GXX_FLAGS,
        "-fopenmp",
        "-Wall",
        "-Wextra",
        "-Werror",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        f"-I{cuda_include()}",
        str(DRIVER),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


@pytest.fixture(scope="session")
def fa2_gpu(tmp_path_factory) -> pathlib.Path:
    """the same program built by nvcc for the visible GPU"""
    arch, nvcc = gpu_arch(), nvcc_path()
    if arch is None or nvcc is None:
        pytest.skip("needs nvcc and an NVIDIA GPU: the emulated build runs the same source on the CPU")
    out = tmp_path_factory.mktemp("fa2_gpu") / "fa2_attention"
    cmd = [
        nvcc,
        "-O3",
        f"-arch={arch}",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        str(DRIVER),
        "-o",
        str(out),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out


BUILDS = ["emulated", "gpu"]


@pytest.fixture
def prog(request) -> pathlib.Path:
    """the test program of the build named by the test's `build` parameter"""
    return request.getfixturevalue("fa2_gpu" if request.param == "gpu" else "fa2")


def bf16_round(x: np.ndarray) -> np.ndarray:
    """x rounded to bf16 (nearest even), as float64, and its bits"""
    bits = f32_to_bf16(np.asarray(x, np.float32))
    return bf16_to_f32(bits).astype(np.float64), bits


def make_inputs(seed: int, B: int, T: int, NH: int, KV: int, HD: int) -> dict[str, np.ndarray]:
    """bf16-representable q (B,T,NH,HD), k, v (B,T,KV,HD), dout (B,T,NH,HD) as float64. Sharpened: scores
    q.k/sqrt(HD) of standard deviation 6, plus 30 j/T for key j (every query leans on one direction e that
    the keys grow along), so row maxima keep rising from tile to tile."""
    rng = np.random.default_rng(seed)
    e = rng.standard_normal(HD)
    e /= np.linalg.norm(e)
    sigma = 6.0**0.5  # q.k/sqrt(HD) has variance sigma^4 = 36
    trend = 10.0 * np.sqrt(HD) * np.arange(T) / T  # times 3 e.e / sqrt(HD): 30 j / T
    q = sigma * rng.standard_normal((B, T, NH, HD)) + 3.0 * e
    k = sigma * rng.standard_normal((B, T, KV, HD)) + trend[None, :, None, None] * e
    v = rng.standard_normal((B, T, KV, HD))
    dout = rng.standard_normal((B, T, NH, HD))
    return {name: bf16_round(x)[0] for name, x in (("q", q), ("k", k), ("v", v), ("dout", dout))}


def run_kernels(
    prog: pathlib.Path, workdir: pathlib.Path, x: dict, packed: bool, variant: int = 0, threads: int = 2
) -> dict[str, np.ndarray]:
    """attention_fwd then attention_bwd on x's tensors; the outputs as float64 (and the smem counts)."""
    B, T, NH, HD = x["q"].shape
    KV = x["k"].shape[2]
    workdir.mkdir(parents=True, exist_ok=True)
    np.array([HD, B, T, NH, KV, int(packed), variant], np.int32).tofile(workdir / "params.bin")
    bits = {name: bf16_round(a)[1] for name, a in x.items()}
    if packed:
        np.concatenate(
            [bits["q"].reshape(B, T, -1), bits["k"].reshape(B, T, -1), bits["v"].reshape(B, T, -1)], axis=-1
        ).tofile(workdir / "qkv.bin")
    else:
        for name in ("q", "k", "v"):
            bits[name].tofile(workdir / f"{name}.bin")
    bits["dout"].tofile(workdir / "dout.bin")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "passive"}
    proc = subprocess.run([str(prog), "run", str(workdir)], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def bf(name, shape):
        return bf16_to_f32(np.fromfile(workdir / f"{name}.bin", np.uint16)).astype(np.float64).reshape(shape)

    out = {
        "o": bf("o", (B, T, NH, HD)),
        "lse": np.fromfile(workdir / "lse.bin", np.float32).astype(np.float64).reshape(B, NH, T),
        "D": np.fromfile(workdir / "D.bin", np.float32).astype(np.float64).reshape(B, NH, T),
    }
    if packed:
        g = bf("dqkv", (B, T, NH + 2 * KV, HD))
        out.update(dq=g[:, :, :NH], dk=g[:, :, NH : NH + KV], dv=g[:, :, NH + KV :])
    else:
        out.update(dq=bf("dq", (B, T, NH, HD)), dk=bf("dk", (B, T, KV, HD)), dv=bf("dv", (B, T, KV, HD)))
    smem = workdir / "smem.bin"
    out["smem"] = json.loads(smem.read_text()) if smem.exists() else {}
    out["raw"] = {p.name: p.read_bytes() for p in workdir.glob("*.bin") if p.name not in ("smem.bin",)}
    return out


# ---- the oracle ------------------------------------------------------------------------------------
def reference(q, k, v, dout) -> dict[str, np.ndarray]:
    """Causal attention and its gradients in float64: q (B,T,NH,HD), k, v (B,T,KV,HD); query head h reads
    K/V head h // (NH/KV); dk, dv of a K/V head sum over its query heads."""
    B, T, NH, HD = q.shape
    KV = k.shape[2]
    R = NH // KV
    kk, vv = np.repeat(k, R, axis=2), np.repeat(v, R, axis=2)
    scale = HD**-0.5
    causal = np.tril(np.ones((T, T), bool))
    s = np.where(causal, np.einsum("bihd,bjhd->bhij", q, kk) * scale, -np.inf)
    m = s.max(-1, keepdims=True)
    e = np.exp(s - m)
    l_ = e.sum(-1, keepdims=True)
    P = e / l_
    o = np.einsum("bhij,bjhd->bihd", P, vv)
    dP = np.einsum("bihd,bjhd->bhij", dout, vv)
    D = np.einsum("bihd,bihd->bhi", dout, o)
    dS = P * (dP - D[..., None])
    return {
        "s": s,
        "P": P,
        "lse": (m + np.log(l_))[..., 0],
        "o": o,
        "D": D,
        "dP": dP,
        "dS": dS,
        "dq": np.einsum("bhij,bjhd->bihd", dS, kk) * scale,
        "dk": (np.einsum("bhij,bihd->bjhd", dS, q) * scale).reshape(B, T, KV, R, HD).sum(3),
        "dv": np.einsum("bhij,bihd->bjhd", P, dout).reshape(B, T, KV, R, HD).sum(3),
    }


def error_bounds(ref: dict, x: dict, o_kernel: np.ndarray) -> dict[str, np.ndarray]:
    """Elementwise first-order bounds of the kernels' errors (the table in the module docstring)."""
    q, k, v, dout = x["q"], x["k"], x["v"], x["dout"]
    B, T, NH, HD = q.shape
    KV = k.shape[2]
    R = NH // KV
    kk, vv = np.repeat(k, R, axis=2), np.repeat(v, R, axis=2)
    scale = HD**-0.5
    P, s, lse, o = ref["P"], ref["s"], ref["lse"], ref["o"]
    live = np.isfinite(s)
    ds = np.where(live, HD * U32 * np.einsum("bihd,bjhd->bhij", abs(q), abs(kk)) * scale, 0.0)
    eps_lse = ds.max(-1) + 8 * U32 * (1 + abs(lse))
    eps_P = np.where(
        live, ds + eps_lse[..., None] + 8 * U32 * (1 + abs(np.where(live, s, 0)) + abs(lse)[..., None]), 0.0
    )
    Pv = np.einsum("bhij,bjhd->bihd", P, abs(vv))
    Pe = P * eps_P
    b_o = (
        U * abs(o)
        + U * Pv
        + np.einsum("bhij,bjhd->bihd", Pe, abs(vv))
        + Pe.sum(-1).transpose(0, 2, 1)[..., None] * abs(o)
        + T * U32 * Pv
    )
    # D: the kernel's is rowsum(dout * o) of its own bf16 o; against the exact D its error is that of o
    dD_own = HD * U32 * np.einsum("bihd,bihd->bhi", abs(dout), abs(o_kernel))
    dD = np.einsum("bihd,bihd->bhi", abs(dout), b_o) + dD_own
    ddP = HD * U32 * np.einsum("bihd,bjhd->bhij", abs(dout), abs(vv))
    dS_abs = abs(ref["dS"])
    dS_err = Pe * abs(ref["dP"] - ref["D"][..., None]) + P * (ddP + dD[..., None]) + U * dS_abs
    grow = T * R * U32
    b_dq = scale * (
        np.einsum("bhij,bjhd->bihd", dS_err, abs(kk)) + grow * np.einsum("bhij,bjhd->bihd", dS_abs, abs(kk))
    )
    b_dk = scale * (np.einsum("bhij,bihd->bjhd", dS_err, abs(q)) + grow * np.einsum("bhij,bihd->bjhd", dS_abs, abs(q)))
    b_dv = np.einsum("bhij,bihd->bjhd", P * (eps_P + U + grow), abs(dout))
    return {
        "o": b_o,
        "lse": eps_lse,
        "D_own": dD_own,
        "dq": b_dq + U * abs(ref["dq"]),
        "dk": b_dk.reshape(B, T, KV, R, HD).sum(3) + U * abs(ref["dk"]),
        "dv": b_dv.reshape(B, T, KV, R, HD).sum(3) + U * abs(ref["dv"]),
    }


def check_against_oracle(x: dict, got: dict) -> dict[str, tuple[float, float]]:
    """Every output within its bound, elementwise; returns name -> (max |err|, max |err| / bound)."""
    ref = reference(x["q"], x["k"], x["v"], x["dout"])
    bound = error_bounds(ref, x, got["o"])
    own_D = np.einsum("bihd,bihd->bhi", x["dout"], got["o"])  # rowsum(dout * o) of the kernel's bf16 o
    pairs = {
        "o": (got["o"], ref["o"], bound["o"]),
        "lse": (got["lse"], ref["lse"], bound["lse"]),
        "D": (got["D"], own_D, bound["D_own"]),
        "dq": (got["dq"], ref["dq"], bound["dq"]),
        "dk": (got["dk"], ref["dk"], bound["dk"]),
        "dv": (got["dv"], ref["dv"], bound["dv"]),
    }
    report = {}
    for name, (g, r, b) in pairs.items():
        err = abs(g - r)
        assert np.all(np.isfinite(g)), f"{name}: non-finite values"
        worst = np.unravel_index(np.argmax(err - b), err.shape)
        assert np.all(err <= b), (
            f"{name}: |err| {err[worst]:.4g} > bound {b[worst]:.4g} at {worst} "
            f"(got {g[worst]:.6g}, want {r[worst]:.6g})"
        )
        report[name] = (float(err.max()), float((err / np.maximum(b, 1e-300)).max()))
        print(
            f"  {name:4s} max |err| {report[name][0]:.3g} (max |ref| {abs(r).max():.3g}), "
            f"max |err|/bound {report[name][1]:.3f}"
        )
    return report


# ---- the oracle itself ----------------------------------------------------------------------------
def test_reference_gradients_match_finite_differences():
    """numpy's analytic gradients of the causal GQA attention are those of its forward (central differences
    of sum(dout * o) in float64), so the kernels are held against the gradients of the function they compute."""
    rng = np.random.default_rng(3)
    B, T, NH, KV, HD = 1, 7, 4, 2, 8
    x = {
        "q": rng.standard_normal((B, T, NH, HD)),
        "k": rng.standard_normal((B, T, KV, HD)),
        "v": rng.standard_normal((B, T, KV, HD)),
        "dout": rng.standard_normal((B, T, NH, HD)),
    }
    ref = reference(**x)

    def loss(**y):
        return float((reference(**{**x, **y})["o"] * x["dout"]).sum())

    h = 1e-6
    for name, grad in (("q", ref["dq"]), ("k", ref["dk"]), ("v", ref["dv"])):
        for idx in [tuple(rng.integers(0, n) for n in x[name].shape) for _ in range(12)]:
            up, dn = x[name].copy(), x[name].copy()
            up[idx] += h
            dn[idx] -= h
            fd = (loss(**{name: up}) - loss(**{name: dn})) / (2 * h)
            assert abs(fd - grad[idx]) <= 1e-7 * (1 + abs(fd)), (name, idx, fd, grad[idx])
    # lse and D as their definitions
    s = np.einsum("bihd,bjhd->bhij", x["q"], np.repeat(x["k"], 2, axis=2)) / np.sqrt(HD)
    for i in range(T):
        np.testing.assert_allclose(ref["lse"][..., i], np.log(np.exp(s[..., i, : i + 1]).sum(-1)), rtol=1e-13)
    np.testing.assert_allclose(ref["D"], (ref["dP"] * ref["P"]).sum(-1), rtol=1e-12, atol=1e-13)


def test_reference_matches_torch_autograd():
    """the same oracle against PyTorch's autograd of F.scaled_dot_product_attention's math in float64"""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    B, T, NH, KV, HD = 2, 19, 6, 3, 16
    x = {
        "q": rng.standard_normal((B, T, NH, HD)),
        "k": rng.standard_normal((B, T, KV, HD)),
        "v": rng.standard_normal((B, T, KV, HD)),
        "dout": rng.standard_normal((B, T, NH, HD)),
    }
    ref = reference(**x)
    q, k, v = (torch.tensor(x[n], dtype=torch.float64, requires_grad=True) for n in ("q", "k", "v"))
    R = NH // KV
    kk, vv = k.repeat_interleave(R, dim=2), v.repeat_interleave(R, dim=2)
    o = torch.nn.functional.scaled_dot_product_attention(
        q.transpose(1, 2), kk.transpose(1, 2), vv.transpose(1, 2), is_causal=True
    ).transpose(1, 2)
    o.backward(torch.tensor(x["dout"]))
    for name, t in (("o", o), ("dq", q.grad), ("dk", k.grad), ("dv", v.grad)):
        np.testing.assert_allclose(ref[name], t.detach().numpy(), rtol=1e-10, atol=1e-12, err_msg=name)


def test_sharpened_inputs_exercise_the_rescale():
    """With the test inputs, the running maximum of most rows rises well after the first key tile, and an
    output that skipped one rescale (kept the accumulator of earlier tiles unscaled) is off by far more
    than the kernels' error bounds: the oracle tests below can see a missed rescale."""
    x = make_inputs(11, 1, 256, 2, 2, 64)
    ref = reference(x["q"], x["k"], x["v"], x["dout"])
    s = ref["s"]
    first = s[..., :TILE].max(-1)[..., TILE:]  # rows past the first tile
    final = s.max(-1)[..., TILE:]
    assert np.median(final - first) > 5.0  # the max moves by > e^5 = 148x
    # the kernel's schedule without the rescale of the accumulator (l rescaled, O not)
    B, T, NH, _ = x["q"].shape
    vv = np.repeat(x["v"], 1, axis=2)
    acc = np.zeros_like(ref["o"])
    m = np.full((B, NH, T), -np.inf)
    l_ = np.zeros((B, NH, T))
    for j0 in range(0, T, TILE):
        blk = s[..., j0 : j0 + TILE]
        m_new = np.maximum(m, blk.max(-1))
        p = np.exp(blk - m_new[..., None])
        l_ = l_ * np.exp(m - m_new) + p.sum(-1)
        acc = acc + np.einsum("bhij,bjhd->bihd", p, vv[:, j0 : j0 + TILE])  # missing: acc * exp(m - m_new)
        m = m_new
    wrong = acc / l_.transpose(0, 2, 1)[..., None]
    bound = error_bounds(ref, x, ref["o"])["o"]
    assert np.abs(wrong - ref["o"]).max() > 100 * bound.max()


# ---- the kernels against the oracle -------------------------------------------------------------
# (name, HD, B, T, NH, KV, packed, variant): GPT-2's packed qkv (KV = NH), Llama's separate q/k/v with GQA
# and MQA, ragged T (not a multiple of any tile), and variant 1: the other tile shapes of the same templates
CASES = [
    ("gpt2_packed_hd64", 64, 2, 256, 4, 4, True, 0),
    ("gpt2_packed_hd128", 128, 1, 192, 2, 2, True, 0),
    ("gqa_hd64_ragged", 64, 2, 200, 6, 2, False, 0),
    ("mqa_hd128_ragged", 128, 1, 130, 4, 1, False, 0),
    ("gqa_packed_hd64_t1", 64, 3, 1, 4, 2, True, 0),
    ("gqa_hd64_tiles_alt", 64, 1, 190, 4, 2, False, 1),
    ("gpt2_hd128_tiles_alt", 128, 2, 96, 2, 2, True, 1),
]


@pytest.mark.parametrize("prog", BUILDS, indirect=True)
@pytest.mark.parametrize("name,HD,B,T,NH,KV,packed,variant", CASES, ids=[c[0] for c in CASES])
def test_forward_and_backward_match_the_oracle(prog, tmp_path, name, HD, B, T, NH, KV, packed, variant):
    x = make_inputs(zlib.crc32(name.encode()) % 1000, B, T, NH, KV, HD)
    got = run_kernels(prog, tmp_path, x, packed, variant)
    print(f"\n{name}: HD {HD}, B {B}, T {T}, NH {NH}, KV {KV}, {'packed' if packed else 'separate'} q/k/v")
    check_against_oracle(x, got)


@pytest.mark.parametrize("prog", BUILDS, indirect=True)
def test_long_sequence_gpt2_shape(prog, tmp_path):
    """T = 1024 with GPT-2's head size: 16 key tiles, so many successive rescales per row"""
    x = make_inputs(7, 1, 1024, 2, 2, 64)
    got = run_kernels(prog, tmp_path, x, packed=True)
    print("\nT = 1024, HD 64, packed")
    check_against_oracle(x, got)


# ---- shared memory: every access conflict-free -----------------------------------------------------
@pytest.mark.parametrize("HD", [64, 128])
def test_every_shared_memory_access_is_conflict_free(fa2, tmp_path, HD):
    """ldmatrix (x4 and x4.trans), cp.async's 16-byte stores, and the counted 4-, 8- and 16-byte loads and
    stores of the output staging and the lse/D tiles: one wavefront per 128-byte phase in every kernel (the
    emulation's count of the 32 lanes' addresses, emulate/emu_banks.h)."""
    B, T, NH, KV = 1, 256, 2, 1
    got = run_kernels(fa2, tmp_path, make_inputs(5, B, T, NH, KV, HD), packed=False)
    stats = got["smem"]
    kinds = {
        "fwd": ["ldmatrix", "cp_async_store", "st_shared", "ld_shared"],
        "dkv": ["ldmatrix", "cp_async_store", "st_shared", "ld_shared"],
        "dq": ["ldmatrix", "cp_async_store", "st_shared", "ld_shared"],
    }
    seen = set()
    for kernel, counts in stats.items():
        short = re.match(r"attention_(?:bwd_)?(fwd|dkv|dq)_kernel", kernel)
        assert short, f"unexpected kernel with shared-memory accesses: {kernel}"
        seen.add(short.group(1))
        for kind in kinds[short.group(1)]:
            c = counts[kind]
            print(
                f"{kernel:60s} {kind:15s} {c['instructions']:8d} instructions {c['phases']:8d} phases "
                f"{c['wavefronts']:8d} wavefronts, max {c['max_way']}-way"
            )
            assert c["instructions"] > 0, (kernel, kind)
            assert c["wavefronts"] == c["phases"] and c["max_way"] == 1, (kernel, kind, c)
        for kind in ("wmma_load", "wmma_store"):
            assert counts[kind]["instructions"] == 0
    assert seen == {"fwd", "dkv", "dq"}
    # every tile byte is copied once per block: Q, K, V of the forward; K, V, and (Q, dout) per query tile of dk/dv
    tiles = {64: dict(fwd=(128, 64), dq=(128, 32), dkv=(64, 64)), 128: dict(fwd=(128, 32), dq=(64, 32), dkv=(64, 32))}
    t = tiles[HD]
    chunks = HD // 8
    bm, bn = t["fwd"]
    fwd = sum(bm * chunks + 2 * bn * chunks * -(-min(i0 + bm, T) // bn) for i0 in range(0, T, bm)) * B * NH
    bm, bn = t["dq"]
    dq = sum(2 * bm * chunks + 2 * bn * chunks * -(-min(i0 + bm, T) // bn) for i0 in range(0, T, bm)) * B * NH
    bn, bq = t["dkv"]
    dkv = (
        sum(2 * bn * chunks + (NH // KV) * 2 * bq * chunks * (-(-T // bq) - j0 // bq) for j0 in range(0, T, bn))
        * B
        * KV
    )
    copies = {
        re.match(r"attention_(?:bwd_)?(\w+?)_kernel", k).group(1): v["cp_async"]["copies"] for k, v in stats.items()
    }
    assert copies == {"fwd": fwd, "dq": dq, "dkv": dkv}


# ---- determinism and refusals ------------------------------------------------------------------------
def test_bitwise_reproducible_across_thread_counts(fa2, tmp_path):
    """no atomics in the header, and the outputs are the same bytes whatever the number of OS threads the
    blocks run on (1 or 3: a different interleaving of blocks)"""
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", HEADER.read_text(), flags=re.S)  # comments removed
    assert "atomic" not in code.lower()
    x = make_inputs(9, 2, 160, 4, 2, 64)
    a = run_kernels(fa2, tmp_path / "one", x, packed=False, threads=1)["raw"]
    b = run_kernels(fa2, tmp_path / "three", x, packed=False, threads=3)["raw"]
    assert a.keys() == b.keys()
    for name in a:
        assert a[name] == b[name], name


@pytest.mark.parametrize(
    "which,message",
    [
        (0, "NH a multiple of KV"),
        (1, "multiples of 8 elements"),
        (2, "16-byte aligned"),
    ],
)
def test_bad_arguments_are_refused_with_one_line(fa2, tmp_path, which, message):
    np.array([64, 1, 64, 4, 2, 0, 0], np.int32).tofile(tmp_path / "params.bin")
    np.array([which], np.int32).tofile(tmp_path / "which.bin")
    proc = subprocess.run([str(fa2), "bad", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stdout + proc.stderr  # both launchers returned cudaErrorInvalidValue
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("attention_fwd: ") and lines[1].startswith("attention_bwd: ")
    assert all(message in line for line in lines), lines


# ---- nvcc: the header compiles for sm_80 and sm_90a without spilling ------------------------------
INSTANCES = """#include "emulate.h"
#include "ptx.cuh"
#include "attention_fa2.cuh"
using llmgen_fa2::bf16;
#define FWD(HD) template cudaError_t llmgen_fa2::attention_fwd<HD>(bf16*, float*, const bf16*, const bf16*, \\
    const bf16*, int, int, int, int, int, int, int, cudaStream_t);
#define BWD(HD) template cudaError_t llmgen_fa2::attention_bwd<HD>(bf16*, bf16*, bf16*, float*, const bf16*, \\
    const bf16*, const bf16*, const bf16*, const bf16*, const float*, int, int, int, int, int, int, int, int, int, \\
    cudaStream_t);
FWD(64) FWD(128) BWD(64) BWD(128)
"""
ARCHS = ["arch=compute_80,code=sm_80", "arch=compute_90a,code=sm_90a"]


def ptxas_report(text: str) -> list[dict]:
    """-Xptxas -v's lines, one dict per entry function: name, registers, stack, spill stores, spill loads"""
    rows, cur = [], None
    for line in text.splitlines():
        m = re.search(r"Compiling entry function '(\w+)' for '(sm_\w+)'", line)
        if m:
            cur = {"mangled": m.group(1), "arch": m.group(2)}
            rows.append(cur)
            continue
        if cur is None:
            continue
        m = re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            cur.update(stack=int(m.group(1)), spill_stores=int(m.group(2)), spill_loads=int(m.group(3)))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            cur["registers"] = int(m.group(1))
    for r in rows:
        r["name"] = (
            subprocess.run(["c++filt"], input=r["mangled"], capture_output=True, text=True).stdout.strip()
            if shutil.which("c++filt")
            else r["mangled"]
        )
    return rows


@pytest.mark.parametrize("arch", ARCHS, ids=["sm_80", "sm_90a"])
def test_ptxas_no_spills(tmp_path, arch):
    """the launchers' kernels for HD 64 and 128 (forward, D, dk/dv, dq): zero spill bytes, no stack frame"""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found: the emulated tests above run the same source on the CPU")
    src = tmp_path / "instances.cu"
    src.write_text(INSTANCES)
    cmd = [
        nvcc,
        "-cubin",
        "-gencode",
        arch,
        "-O3",
        "-Xptxas",
        "-v",
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        str(src),
        "-o",
        str(tmp_path / "instances.cubin"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = ptxas_report(proc.stdout + proc.stderr)
    assert len(rows) == 8, rows  # 4 kernels x HD 64, 128
    print()
    for r in sorted(rows, key=lambda r: r["name"]):
        print(
            f"{r['arch']:7s} {r['name'][:90]:90s} {r['registers']:4d} registers, stack {r['stack']}, "
            f"spills {r['spill_stores']}/{r['spill_loads']}"
        )
        assert (r["stack"], r["spill_stores"], r["spill_loads"]) == (0, 0, 0), r
        assert r["registers"] <= 255


def test_test_program_compiles_with_nvcc(tmp_path):
    """fa2_attention.cu itself (every tile variant the emulated tests run) builds for sm_90a"""
    nvcc = nvcc_path()
    if nvcc is None:
        pytest.skip("nvcc not found")
    cmd = [
        nvcc,
        "-c",
        "-gencode",
        ARCHS[1],
        f"-I{EMULATE}",
        f"-I{CUDA_TEMPLATES}",
        f"-I{KERNELS}",
        f"-I{TESTIO}",
        str(DRIVER),
        "-o",
        str(tmp_path / "fa2.o"),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_header_passes_through_jinja_unchanged():
    """the generator may paste the header into train.cu: its environment leaves the text as it is"""
    from llmgen.codegen import environment

    text = HEADER.read_text()
    assert environment().from_string(text).render() == text
