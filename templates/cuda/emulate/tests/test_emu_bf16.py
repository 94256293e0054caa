"""bf16 under emulation: conversions and the __h*_rn intrinsics are bit-exact with torch; __hfma /
__hfma2 round once (checked against a float64 reference rounded in one step); the bf16 math helpers
that cuda_bf16.h keeps device-only are within one bf16 ulp of torch; llm.c-style 16-byte packed
loads work (-fno-strict-aliasing)."""

import numpy as np
import pytest

from emu_helpers import bf16_to_f32, f32_to_bf16, f64_to_bf16, run_program, programs  # noqa: F401 (fixture)

torch = pytest.importorskip("torch")


def torch_bf16_bits(x: np.ndarray) -> np.ndarray:
    return (
        torch.from_numpy(np.ascontiguousarray(x, np.float32))
        .to(torch.bfloat16)
        .view(torch.int16)
        .numpy()
        .view(np.uint16)
    )


def bits_to_torch(bits: np.ndarray):
    return torch.from_numpy(bits.view(np.int16).copy()).view(torch.bfloat16)


def random_bf16(rng, n, scale=1.0):
    return f32_to_bf16((rng.standard_normal(n) * scale).astype(np.float32))


def test_float_to_bf16_matches_torch(programs, tmp_path):
    rng = np.random.default_rng(5)
    x = np.concatenate(
        [
            rng.standard_normal(50_000).astype(np.float32) * 100,
            # ties: exactly halfway between two bf16 values, both parities
            ((np.arange(1000, dtype=np.uint32) << 16) + 0x3F808000).view(np.float32),
            np.array([0.0, -0.0, np.inf, -np.inf, 3.4e38, -3.4e38, 1e-40, -1e-45, 1.17549435e-38], np.float32),
        ]
    )
    r = run_program(programs["bf16"], "convert", tmp_path, {"x": x})
    np.testing.assert_array_equal(r.out("out", np.uint16), torch_bf16_bits(x))
    np.testing.assert_array_equal(r.out("back", np.float32), bf16_to_f32(torch_bf16_bits(x)))
    nan = np.array([np.nan], np.float32)
    r2 = run_program(programs["bf16"], "convert", tmp_path / "nan", {"x": nan})
    assert np.isnan(bf16_to_f32(r2.out("out", np.uint16))).all()


def test_axpy_rn_bit_exact(programs, tmp_path):
    rng = np.random.default_rng(6)
    n = 1 << 18
    x, y = random_bf16(rng, n), random_bf16(rng, n, 3.0)
    a = f32_to_bf16(np.array([0.7371], np.float32))
    r = run_program(programs["bf16"], "axpy", tmp_path, {"x": x, "y": y, "a": a})
    ref = bits_to_torch(a)[0] * bits_to_torch(x) + bits_to_torch(y)  # torch rounds each op to bf16
    np.testing.assert_array_equal(r.out("y", np.uint16), ref.view(torch.int16).numpy().view(np.uint16))


def tie_cases(n_max: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """a*b exactly halfway between two bf16 values, c tiny: rounding to float first would land on
    the tie and round to even; the single rounding __hfma does must not."""
    vals = 1.0 + np.arange(128) / 128.0  # every bf16 in [1, 2)
    a, b = np.meshgrid(vals, vals)
    p = (a * b).ravel()
    scaled = p / 2.0 ** np.floor(np.log2(p)) * 2.0**7  # significand as 1xxxxxxx.yyy (7 fraction bits)
    ties = np.nonzero(scaled - np.floor(scaled) == 0.5)[0][:n_max]
    sign = np.where(np.arange(len(ties)) % 2 == 0, 1.0, -1.0)
    c = sign * 2.0**-30
    return (
        f32_to_bf16(a.ravel()[ties].astype(np.float32)),
        f32_to_bf16(b.ravel()[ties].astype(np.float32)),
        f32_to_bf16(c.astype(np.float32)),
    )


def test_hfma_rounds_once(programs, tmp_path):
    rng = np.random.default_rng(7)
    n = 1 << 16
    ta, tb, tc = tie_cases(512)
    a = np.concatenate([random_bf16(rng, n), ta])
    b = np.concatenate([random_bf16(rng, n), tb])
    c = np.concatenate([random_bf16(rng, n, 0.5), tc])
    r = run_program(programs["bf16"], "hfma", tmp_path, {"a": a, "b": b, "c": c})
    exact = bf16_to_f32(a).astype(np.float64) * bf16_to_f32(b) + bf16_to_f32(c)
    ref = f64_to_bf16(exact)
    np.testing.assert_array_equal(r.out("out", np.uint16), ref)
    twice = f32_to_bf16(exact.astype(np.float32))  # what rounding twice would give
    assert (twice != ref).sum() >= len(ta) // 2, "the tie cases must exercise double rounding"


def test_bf16_math_within_one_ulp(programs, tmp_path):
    rng = np.random.default_rng(8)
    n = 4096
    x = random_bf16(rng, n, 2.0)
    x[x == 0] = f32_to_bf16(np.array([0.5], np.float32))[0]
    r = run_program(programs["bf16"], "math", tmp_path, {"x": x})
    got = bf16_to_f32(r.out("out", np.uint16, (n, 8)))
    xt = bits_to_torch(x).float()
    pos = xt.abs()
    refs = [
        torch.exp(xt),
        torch.sqrt(pos),
        torch.rsqrt(pos),
        torch.tanh(xt),
        torch.log(pos),
        1.0 / xt,
        torch.clamp(xt, min=0.0),
        -xt,
    ]
    for k, ref in enumerate(refs):
        ref = ref.to(torch.bfloat16).float().numpy()
        ulp = np.abs(np.spacing(ref.astype(np.float32))) * 65536  # one bf16 ulp
        assert (np.abs(got[:, k] - ref) <= ulp).all(), f"function {k}"
    prod = bf16_to_f32(f32_to_bf16(bf16_to_f32(x) * np.float32(37.0)))
    np.testing.assert_array_equal(r.out("ints", np.int32), np.rint(prod).astype(np.int32))


def test_packed_bf16x8(programs, tmp_path):
    rng = np.random.default_rng(9)
    n = 8 * 1000
    x, y = random_bf16(rng, n), random_bf16(rng, n)
    r = run_program(programs["bf16"], "packed", tmp_path, {"x": x, "y": y})
    fx, fy = bf16_to_f32(x), bf16_to_f32(y)
    s = bf16_to_f32(f32_to_bf16(fx + fy))
    ref = f64_to_bf16(fx.astype(np.float64) * fy + s)
    np.testing.assert_array_equal(r.out("out", np.uint16), ref)
