"""wmma (tensor-core fragments) under emulation, as the tensor-core attention uses them: bf16
16x16x16 tiles with fp32 accumulators in every layout, against numpy in float64 (bf16 products
are exact in fp32; the sums of 32 of them agree to fp32 rounding); the documented 32-byte
alignment rule is enforced; what other lanes stored is visible only after __syncwarp()."""

import numpy as np

from emu_helpers import bf16_to_f32, f32_to_bf16, programs, run_program  # noqa: F401 (fixture)


def test_mma_all_layouts_match_numpy(programs, tmp_path):
    rng = np.random.default_rng(11)
    a = f32_to_bf16(rng.standard_normal((16, 32)).astype(np.float32))
    b = f32_to_bf16(rng.standard_normal((32, 16)).astype(np.float32))
    c = rng.standard_normal((16, 16)).astype(np.float32)
    bt = np.ascontiguousarray(b.T)
    r = run_program(programs["wmma"], "mma", tmp_path, {"a": a, "b": b, "bt": bt, "c": c})
    ref = bf16_to_f32(a).astype(np.float64) @ bf16_to_f32(b).astype(np.float64) + c
    d_row = r.out("d_row", np.float32, (16, 16))
    np.testing.assert_allclose(d_row, ref, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(r.out("d_t", np.float32, (16, 16)), d_row)  # b col-major: same sums
    np.testing.assert_array_equal(r.out("d_col", np.float32, (16, 16)).T, d_row)  # stored column-major


def test_store_is_visible_to_other_lanes_after_syncwarp_only(programs, tmp_path):
    seen = run_program(programs["wmma"], "visibility", tmp_path).out("seen", np.float32)
    assert seen[0] == -1.0  # lane 1's share not written yet: a missing __syncwarp shows
    assert seen[1] == 2.0


def test_misaligned_pointer_is_reported(programs, tmp_path):
    r = run_program(programs["wmma"], "misaligned", tmp_path, expect_ok=False)
    assert r.returncode != 0
    assert "wmma::load_matrix_sync" in r.stderr and "32-byte aligned" in r.stderr
