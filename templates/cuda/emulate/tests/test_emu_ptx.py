"""The PTX instructions of templates/cuda/ptx.cuh under emulation, lane by lane against numpy through
the PTX ISA's documented fragment layouts (written out again here, from the ISA text, independently of
emu_ptx.h): mma.sync m16n8k16 bf16 (9.7.14.5.8), ldmatrix m8n8 x1/x2/x4 and .trans (9.7.14.5.15),
cp.async with commit/wait groups (9.7.9.25.3), ex2.approx.ftz.f32 (9.7.3.21), cvt.rn.bf16x2.f32; the
rules the emulation enforces (.aligned, cp.async visibility); and the bank-conflict counts of accesses
whose conflicts are computed by hand (32 banks of 4 bytes).

The fragment, cp.async and math cases also run the same program built by nvcc on a GPU where there is
one (the "gpu" variants, skipped otherwise): the hardware against the same numpy references, so a GPU
session checks the models the CPU runs rely on."""

import json

import numpy as np
import pytest

from emu_helpers import bf16_to_f32, f32_to_bf16, nvcc_program, programs, run_program  # noqa: F401 (fixture)

BUILDS = ["emulated", "gpu"]


@pytest.fixture
def ptx(request, programs, tmp_path_factory):
    """(the ptx test program, emulated?) for the build named by the test's `build` parameter"""
    if request.node.callspec.params["build"] == "gpu":
        return nvcc_program("ptx.cu", tmp_path_factory.getbasetemp()), False
    return programs["ptx"], True


def group_thread(lane):
    return lane >> 2, lane % 4  # groupID, threadID_in_group


# ---- mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 -----------------------------------------
def a_position(lane, i):
    """(row, col) of element a_i of A (16x16) held by `lane`: the ISA's formula for .bf16"""
    g, t = group_thread(lane)
    row = g if (0 <= i < 2 or 4 <= i < 6) else g + 8
    col = t * 2 + (i & 1) if i < 4 else t * 2 + (i & 1) + 8
    return row, col


def b_position(lane, i):
    g, t = group_thread(lane)
    row = t * 2 + (i & 1) if i < 2 else t * 2 + (i & 1) + 8
    return row, g


def c_position(lane, i):
    g, t = group_thread(lane)
    return (g if i < 2 else g + 8), t * 2 + (i & 1)


def pack_pairs(bits, position, n_elems):
    """per-lane .b32 registers: elements low to high, two 16-bit elements per register, lower index in
    the low half"""
    regs = np.zeros((32, n_elems // 2), np.uint32)
    for lane in range(32):
        for i in range(n_elems):
            regs[lane, i // 2] |= np.uint32(bits[position(lane, i)]) << np.uint32(16 * (i % 2))
    return regs


@pytest.mark.parametrize("build", BUILDS)
def test_mma_m16n8k16_bf16_every_lane_matches_numpy(ptx, tmp_path, build):
    prog, emulated = ptx
    rng = np.random.default_rng(5)
    a_bits = f32_to_bf16(rng.standard_normal((16, 16)).astype(np.float32))
    b_bits = f32_to_bf16(rng.standard_normal((16, 8)).astype(np.float32))
    c = rng.standard_normal((16, 8)).astype(np.float32)
    c_regs = np.array([[c[c_position(lane, i)] for i in range(4)] for lane in range(32)], np.float32)
    r = run_program(
        prog,
        "mma",
        tmp_path,
        {"a": pack_pairs(a_bits, a_position, 8), "b": pack_pairs(b_bits, b_position, 4), "c": c_regs},
    )
    A, B = bf16_to_f32(a_bits), bf16_to_f32(b_bits)
    # fp32, k in order, from C: the products of two bf16 values are exact in fp32
    want = c.copy()
    for k in range(16):
        want = (want + A[:, k : k + 1] * B[k : k + 1, :]).astype(np.float32)
    exact = A.astype(np.float64) @ B.astype(np.float64) + c
    for name in ("d", "d_inplace"):
        d = r.out(name, np.float32, (32, 4))
        got = np.zeros((16, 8), np.float32)
        for lane in range(32):
            for i in range(4):
                got[c_position(lane, i)] = d[lane, i]
        if emulated:  # the tensor cores accumulate in their own order and precision
            np.testing.assert_array_equal(got, want)
        np.testing.assert_allclose(got, exact, rtol=0, atol=4e-6)
    # every (row, col) of D is held by exactly one (lane, register)
    assert sorted(c_position(lane, i) for lane in range(32) for i in range(4)) == [
        (m, n) for m in range(16) for n in range(8)
    ]


# ---- ldmatrix.sync.aligned.m8n8.x{1,2,4}{.trans}.shared.b16 -------------------------------------
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_every_lane_matches_numpy(ptx, tmp_path, num, trans, build):
    rng = np.random.default_rng(10 * num + trans)
    tile = np.arange(64 * 64, dtype=np.uint16).reshape(64, 64)  # every element distinct
    rows = rng.permutation(64)[:32]  # any row for any lane
    chunks = rng.integers(0, 8, 32)  # any 16-byte column chunk
    off = (rows * 64 + chunks * 8).astype(np.int32)
    off[8 * num :] += 1  # lanes past 8*num give no row: a misaligned address there must be ignored
    case = f"ldmatrix_x{num}" + ("_trans" if trans else "")
    got = run_program(ptx[0], case, tmp_path, {"tile": tile, "off": off}).out("r", np.uint32, (32, num))
    for m in range(num):
        # matrix m: its row i is the 8 elements at the address lane 8m + i gave
        mat = np.stack([tile[rows[8 * m + i], 8 * chunks[8 * m + i] : 8 * chunks[8 * m + i] + 8] for i in range(8)])
        if trans:
            mat = mat.T  # .trans: loaded column-major
        for lane in range(32):
            # "a group of four threads loads an entire row": lane l gets row l/4, elements 2(l%4), 2(l%4)+1
            lo, hi = mat[lane // 4, 2 * (lane % 4)], mat[lane // 4, 2 * (lane % 4) + 1]
            assert got[lane, m] == int(lo) | (int(hi) << 16), (case, lane, m)


# ---- cp.async --------------------------------------------------------------------------------------
@pytest.mark.parametrize("build", BUILDS)
@pytest.mark.parametrize("take", [16, 12, 0])
def test_cp_async_contents_groups_and_counts(ptx, tmp_path, take, build):
    prog, emulated = ptx
    rng = np.random.default_rng(take)
    src = rng.standard_normal((64, 32)).astype(np.float32)
    r = run_program(prog, "cp_async", tmp_path, {"src": src, "take": np.array([take], np.int32)})
    want = src.reshape(64, 8, 4).copy()
    want[:, :, take // 4 :] = 0.0  # src-size < 16: the rest zero-filled
    np.testing.assert_array_equal(r.out("out", np.float32, (64, 8, 4)), want)
    if not emulated:
        return
    # thread 5's record: a copy and a commit per group; wait_group 1 after every commit from the second
    # (a two-deep pipeline), then wait_group 0
    assert (r.dir / "trace.bin").read_text() == "c C c C W1 c C W1 c C W1 W0 "
    copies, commits, waits, max_pending, instr, wavefronts, phases = r.out("counts", np.uint64)
    assert (copies, commits, waits) == (2 * 512, 2 * 128 * 4, 2 * 128 * 4)  # 2 blocks of 128 threads
    assert max_pending == 2  # at the first wait_group 1, two groups were pending
    # 2 blocks x 4 warps x 4 groups; 16 bytes per lane = 4 phases of 8 lanes, each a whole 128-byte row
    assert (instr, phases, wavefronts) == (32, 128, 128)


@pytest.mark.parametrize(
    "case,message",
    [
        ("read_before_wait", "no cp.async.wait_group of that thread has covered the group yet"),
        ("wait_without_barrier", "but no __syncthreads came after"),
        ("store_over_copy_in_flight", "still has in flight"),
        ("mma_after_exit", "this .aligned instruction needs all 32 lanes"),
        ("ldmatrix_misaligned", "is not 16-byte aligned"),
        ("ldmatrix_global", "not in shared memory"),
    ],
)
def test_rules_are_enforced(programs, tmp_path, case, message):
    r = run_program(programs["ptx"], case, tmp_path, expect_ok=False)
    assert r.returncode != 0 and "finished" not in r.stdout
    assert message in r.stderr, r.stderr
    assert "llmgen emulate:" in r.stderr and "kernel " + case.split("_global")[0] in r.stderr


def test_wait_then_barrier_is_accepted(programs, tmp_path):
    r = run_program(programs["ptx"], "wait_and_barrier", tmp_path)
    assert "finished" in r.stdout


# ---- bank conflicts ------------------------------------------------------------------------------
# (instructions, phases, wavefronts, max_way); a phase is 8 rows of 16 bytes for ldmatrix and 16-byte
# accesses, 32 lanes for 4-byte ones; its cost is the most distinct 4-byte words in one of 32 banks.
CONFLICTS = {
    # 16x16 bf16 tile, rows 128 bytes apart: the 8 rows of a phase all start in bank 0 (128 = 32 words)
    # and read banks 4c..4c+3: 8 distinct words per bank. Counted twice (two launches).
    "ldm_unpadded": (2, 8, 64, 8),
    "ldm_padded": (1, 4, 4, 1),  # rows 144 bytes apart: row i starts in bank 4i mod 32: all distinct
    "ldm_swizzled": (1, 4, 4, 1),  # chunk c of row i stored at chunk c ^ (i % 8): banks 4(c^i) distinct
    "ldm_32byte_rows": (1, 4, 8, 2),  # rows 32 bytes apart: rows i and i+4 share banks
    "wmma_unpadded": (1, 4, 32, 8),  # unpadded 128-byte-row tiles (the removed wmma attention's)
    "wmma_padded": (1, 4, 4, 1),
    "words_0": (1, 1, 1, 1),  # one word for every lane: a broadcast
    "words_1": (1, 1, 1, 1),
    "words_2": (1, 1, 2, 2),  # words 0, 2, ..., 62: each even bank twice
    "words_32": (1, 1, 32, 32),  # every lane in bank 0
    "words_33": (1, 1, 1, 1),  # the classic padding
    "st16_1": (1, 4, 4, 1),  # 16-byte stores, consecutive
    "st16_2": (1, 4, 8, 2),  # 32 bytes apart: lanes l and l+4 of a phase collide
    "st16_8": (1, 4, 32, 8),  # 128 bytes apart: the 8 lanes of a phase in banks 0-3
}


def test_bank_conflicts_match_hand_counts(programs, tmp_path):
    r = run_program(programs["ptx"], "conflicts", tmp_path)
    got = {name: tuple(int(v) for v in r.out(name, np.uint64)) for name in CONFLICTS}
    assert got == CONFLICTS


def test_bank_conflict_report(programs, tmp_path):
    path = tmp_path / "report.json"
    r = run_program(programs["ptx"], "report", tmp_path / "a", env={"LLMGEN_EMU_BANK_CONFLICTS": str(path)})
    at_exit = json.loads(path.read_text())
    assert at_exit == json.loads((r.dir / "json.bin").read_text())  # the C API says the same
    ldm = at_exit["conflicts_ldmatrix"]["ldmatrix"]
    assert (ldm["instructions"], ldm["phases"], ldm["wavefronts"], ldm["max_way"]) == (1, 4, 32, 8)
    assert at_exit["conflicts_words"]["ld_shared"]["max_way"] == 32
    r = run_program(programs["ptx"], "report", tmp_path / "b", env={"LLMGEN_EMU_BANK_CONFLICTS": "1"})
    table = [line.split() for line in r.stderr.splitlines()]
    assert ["conflicts_ldmatrix", "ldmatrix", "1", "4", "32", "8.00", "8"] in table
    assert ["conflicts_words", "ld_shared", "1", "1", "32", "32.00", "32"] in table


# ---- ex2.approx.ftz.f32 and cvt.rn.bf16x2.f32 ----------------------------------------------------
def ulp_distance(a, b):
    """distance in float32 ulps between finite values of the same sign"""
    ia, ib = a.view(np.int32).astype(np.int64), b.view(np.int32).astype(np.int64)
    return np.abs(ia - ib)


@pytest.mark.parametrize("build", BUILDS)
def test_ex2_and_bf16x2_pack(ptx, tmp_path, build):
    prog, emulated = ptx
    rng = np.random.default_rng(2)
    x = np.concatenate([rng.uniform(-30, 30, 2000), rng.uniform(-126, 127.9, 2000)]).astype(np.float32)
    special = np.array([-130.0, -126.5, -125.0, 1e-40, -1e-40, 0.0, -0.0, np.inf, -np.inf, np.nan, 128.5], np.float32)
    x = np.concatenate([x, special])
    lo = rng.standard_normal(x.size).astype(np.float32) * 100
    hi = rng.standard_normal(x.size).astype(np.float32)
    # exact ties between two bf16 values round to the even one; a float32 subnormal stays subnormal
    lo[:4] = np.array([0x3F808000, 0x3F818000, 0xBF808001, 0x00012345], np.uint32).view(np.float32)
    r = run_program(prog, "math", tmp_path, {"x": x, "lo": lo, "hi": hi})
    e = r.out("e", np.float32)
    n = x.size - special.size
    want = np.exp2(x[:n].astype(np.float64)).astype(np.float32)
    normal = want >= np.float32(2.0**-126)
    assert ulp_distance(e[:n][normal], want[normal]).max() <= (1 if emulated else 2)  # glibc; the ISA's bound
    assert np.all(e[:n][~normal] == 0.0)  # subnormal results flush to +0
    s = e[n:]
    assert s[0] == 0.0 and s[1] == 0.0 and s[2] == np.float32(2.0**-125)
    assert s[3] == 1.0 and s[4] == 1.0 and s[5] == 1.0 and s[6] == 1.0  # subnormal inputs flush to 0
    assert s[7] == np.inf and s[8] == 0.0 and np.isnan(s[9]) and s[10] == np.inf
    packed = r.out("packed", np.uint32)
    want_packed = f32_to_bf16(lo).astype(np.uint32) | (f32_to_bf16(hi).astype(np.uint32) << 16)
    np.testing.assert_array_equal(packed, want_packed)
    assert [int(v) & 0xFFFF for v in packed[:4]] == [0x3F80, 0x3F82, 0xBF81, 0x0001]
