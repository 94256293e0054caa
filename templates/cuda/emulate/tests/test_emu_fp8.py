"""FP8 under emulation: cuda_fp8.h's conversions, as kernels call them, against torch's float8 dtypes
(torch.float8_e4m3fn, torch.float8_e5m2), bit for bit.

cuda_fp8.h documents __nv_cvt_float_to_fp8(x, __NV_SATFINITE, fmt) as round to nearest even with
saturation to the largest finite value (E4M3: 448, E5M2: 57344; +-Inf saturates too, NaN stays NaN);
on sm_89+ it is cvt.rn.satfinite.{e4m3,e5m2}x2.f32, and under the emulation it is NVIDIA's host code.
torch's float8 cast rounds to nearest even too, but its e5m2 cast does NOT saturate (past 57344 it gives
+-Inf) and its e4m3fn behaviour past 448 is not documented (torch 2.13 on the CPU clamps), so the
reference is torch's cast of the value clamped to the finite range first (test_torch_cast_does_not_saturate
shows the difference, and that __NV_NOSAT is torch's unclamped e5m2 cast).

Inputs: every code's value and its float32 neighbours, every midpoint between consecutive finite codes
(the ties) and its neighbours, the values around the largest finite one, the subnormal range, zeros,
infinities, NaNs, and a random sample of 2^21 float32 bit patterns plus 2^21 values spread over 14
decades; for bf16 inputs, all 65536 bf16 bit patterns."""

import numpy as np
import pytest

from emu_helpers import run_program, programs  # noqa: F401 (fixture)

torch = pytest.importorskip("torch")

FORMATS = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}


def decode_all(fmt: str) -> np.ndarray:
    """the float32 value of each of the 256 codes, by torch"""
    return torch.arange(256, dtype=torch.uint8).view(FORMATS[fmt][0]).float().numpy()


def torch_fp8(x: np.ndarray, fmt: str, clamp: bool = True) -> np.ndarray:
    """torch's float8 code of each float32 (clamped to the finite range first unless clamp=False)"""
    dtype, fmax = FORMATS[fmt]
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    if clamp:
        t = t.clamp(-fmax, fmax)
    return t.to(dtype).view(torch.uint8).numpy()


def is_nan_code(code: np.ndarray, fmt: str) -> np.ndarray:
    c = code & 0x7F
    return c == 0x7F if fmt == "e4m3" else c > 0x7C


def neighbourhoods() -> np.ndarray:
    """every code's value, the midpoints between consecutive finite codes, each with its float32
    neighbours, for both formats; the edges of the range; zeros, infinities, NaNs"""
    pts = []
    for fmt, (_, fmax) in FORMATS.items():
        v = decode_all(fmt)
        fin = np.unique(v[np.isfinite(v)].astype(np.float64))  # sorted, -max .. max (0 once)
        mids = (fin[:-1] + fin[1:]) / 2  # exact in float32: one more bit
        step_top = fin[-1] - fin[-2]
        edges = np.array(
            [
                fmax + step_top / 2,
                fmax + step_top,
                2 * fmax,
                fin[fin > 0][0] / 2,
                fin[fin > 0][0] / 4,
                3 * fin[fin > 0][0] / 4,
            ]
        )  # the tie above max, subnormal ties
        for base in (fin, mids, edges, -edges):
            b = base.astype(np.float32)
            pts += [b, np.nextafter(b, np.float32(np.inf)), np.nextafter(b, np.float32(-np.inf))]
    special = np.array(
        [
            0.0,
            -0.0,
            np.inf,
            -np.inf,
            1e30,
            -1e30,
            3.4028235e38,
            -3.4028235e38,
            1e-45,
            -1e-45,
            1.1754944e-38,
            65504.0,
            57344.0,
            61439.996,
            61440.0,
            448.0,
            464.0,
            464.00003,
            480.0,
        ],
        np.float32,
    )
    nans = np.array([0x7FC00000, 0xFFC00000, 0x7F800001, 0xFFFFFFFF, 0x7FBFFFFF], np.uint32).view(np.float32)
    return np.concatenate(pts + [special, nans])


def random_sample(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2**32, size=2**21, dtype=np.uint64).astype(np.uint32).view(np.float32)
    spread = (rng.standard_normal(2**21) * 10.0 ** rng.uniform(-8, 6, 2**21)).astype(np.float32)
    return np.concatenate([bits, spread])


def check_codes(name: str, got: np.ndarray, x: np.ndarray, fmt: str) -> None:
    nan_in = np.isnan(x)
    want = torch_fp8(x, fmt)
    bad = (got != want) & ~nan_in
    assert not bad.any(), (
        f"{name}: {bad.sum()} of {x.size} differ from torch, e.g. x={x[bad][:5]} "
        f"got={got[bad][:5]} want={want[bad][:5]}"
    )
    assert is_nan_code(got[nan_in], fmt).all(), f"{name}: a NaN input did not give a NaN code"
    # cuda_fp8.h canonicalises NaN (the sign is dropped): 0x7F in both formats
    assert (got[nan_in] == 0x7F).all(), f"{name}: NaN codes {np.unique(got[nan_in])}"


@pytest.mark.parametrize("inputs", ["neighbourhoods", "random"])
def test_float_to_fp8_matches_torch_clamped(programs, tmp_path, inputs):
    x = neighbourhoods() if inputs == "neighbourhoods" else random_sample()
    if x.size % 2:
        x = np.append(x, np.float32(1.0))
    r = run_program(programs["fp8"], "cvt", tmp_path, {"x": x}, timeout=600)
    for fmt in FORMATS:
        for variant in ("{}", "{}x2", "cls_{}", "host_{}"):
            name = variant.format(fmt)
            check_codes(name, r.out(name, np.uint8), x, fmt)
    print(f"{x.size} inputs: every conversion equals torch's clamped cast")


def test_neighbourhoods_cover_every_code_and_tie(programs, tmp_path):
    """the inputs reach every finite code of both formats, and the ties really are ties (an input
    exactly halfway between two codes goes to the one with the even mantissa)"""
    x = neighbourhoods()
    for fmt in FORMATS:
        codes = torch_fp8(x[~np.isnan(x)], fmt)
        finite = np.flatnonzero(np.isfinite(decode_all(fmt)))
        assert set(finite) <= set(codes.tolist())
        v = decode_all(fmt).astype(np.float64)
        fin = np.unique(v[np.isfinite(v)])
        pos = fin[fin >= 0]
        mids = ((pos[:-1] + pos[1:]) / 2).astype(np.float32)
        got = torch_fp8(mids, fmt)
        assert (got & 1 == 0).all()  # ties to even: the code's lowest mantissa bit is 0


def test_bf16_to_fp8_all_patterns(programs, tmp_path):
    """__nv_cvt_bfloat16raw_to_fp8 on all 65536 bf16 patterns: torch's cast of the (exactly widened)
    bf16 value, clamped"""
    xb = np.arange(2**16, dtype=np.uint32).astype(np.uint16)
    r = run_program(programs["fp8"], "bf16", tmp_path, {"xb": xb})
    x = (xb.astype(np.uint32) << 16).view(np.float32)
    for fmt in FORMATS:
        check_codes(f"bf16->{fmt}", r.out(fmt, np.uint8), x, fmt)


def test_decode_every_code(programs, tmp_path):
    r = run_program(programs["fp8"], "decode", tmp_path)
    for fmt in FORMATS:
        want = decode_all(fmt)
        for name, got in (
            (fmt, r.out(fmt, np.float32)),
            ("half_" + fmt, r.out("half_" + fmt, np.uint16).view(np.float16).astype(np.float32)),
        ):
            np.testing.assert_array_equal(np.isnan(got), np.isnan(want), err_msg=name)
            ok = ~np.isnan(want)
            np.testing.assert_array_equal(got[ok], want[ok], err_msg=name)
            np.testing.assert_array_equal(np.signbit(got[ok]), np.signbit(want[ok]), err_msg=name)


def test_torch_cast_does_not_saturate(programs, tmp_path):
    """Why the reference clamps first. torch 2.13 (CPU) casts past the finite range of e5m2 to +-Inf, and
    +-Inf stays +-Inf, where __NV_SATFINITE gives +-57344; its e4m3fn cast happens to clamp (also +-Inf to
    +-448), which nothing documents, so the oracle clamps both. __NV_NOSAT is torch's e5m2 cast, and for
    e4m3 gives NaN past the range (464 still rounds down to 448, the tie to even)."""
    x = np.array([500.0, -500.0, 1e6, 61440.0, 1e30, -np.inf, np.inf, 448.0, 464.0, 57344.0, 465.0, 1.0], np.float32)
    r = run_program(programs["fp8"], "cvt", tmp_path, {"x": x})
    e5_torch = torch_fp8(x, "e5m2", clamp=False)
    assert list(e5_torch[3:7]) == [0x7C, 0x7C, 0xFC, 0x7C]  # torch: +Inf, -Inf
    assert list(r.out("e5m2", np.uint8)[3:7]) == [0x7B, 0x7B, 0xFB, 0x7B]  # satfinite: +-57344
    assert list(r.out("e4m3", np.uint8)[[0, 1, 2, 5, 6, 10]]) == [0x7E, 0xFE, 0x7E, 0xFE, 0x7E, 0x7E]  # +-448
    np.testing.assert_array_equal(r.out("nosat_e5m2", np.uint8), e5_torch)
    n4 = r.out("nosat_e4m3", np.uint8)
    assert is_nan_code(n4[[0, 1, 2, 3, 4, 5, 6, 10]], "e4m3").all() and list(n4[[7, 8]]) == [0x7E, 0x7E]


def test_byte_perm(programs, tmp_path):
    """__byte_perm(x, y, s): byte n of the result is byte (s >> 4n) & 7 of {y, x} (CUDA's documentation)"""
    rng = np.random.default_rng(3)
    n = 4096
    x, y, s = (rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) for _ in range(3))
    s[:16] = [
        0x3210,
        0x7654,
        0x5140,
        0x7362,
        0x5410,
        0x7632,
        0x0123,
        0x4567,
        0x8888,
        0xFFFF,
        0,
        0x1111,
        0x7777,
        0x0404,
        0xCBA9,
        0x32107654,
    ]
    r = run_program(programs["fp8"], "byte_perm", tmp_path, {"x": x, "y": y, "s": s})
    v = (y.astype(np.uint64) << np.uint64(32)) | x.astype(np.uint64)
    want = np.zeros(n, np.uint64)
    for b in range(4):
        sel = (s.astype(np.uint64) >> np.uint64(4 * b)) & np.uint64(7)
        want |= ((v >> (np.uint64(8) * sel)) & np.uint64(0xFF)) << np.uint64(8 * b)
    np.testing.assert_array_equal(r.out("r", np.uint32), want.astype(np.uint32))
