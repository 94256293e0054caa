"""The embedding kernels of embed.cuh, run emulated (kernels/embed_test.cu), fp32 and bf16 storage,
C in 768 (GPT-2), 4096 (Llama-3 8B: several blocks per bucket with bf16), 100 and 37.

Forward: bit-exact (T(wte + wpe) with the sum in fp32: numpy does the same; a plain gather without wpe).
Backward: the token buckets are checked as data (largest first, ties by token id, positions ascending
inside a bucket); dwte and dwpe are checked BIT-EXACT against numpy summing the same float32 values in
the same order (position order per token, batch order per position, starting from 0 and added to the
old gradient last, as the trainer's kernels do), and against float64 sums (rtol 1e-6, atol 1e-6 of
the row scale: fp32 rounding of at most 64 terms); two launches give the same bits."""

import numpy as np
import pytest

from kern_helpers import check_close, program, read_storage, round_storage, run_program, to_storage

F = np.float32
SIZES = [768, 4096, 100, 37]
DTYPES = ["f32", "bf16"]


@pytest.mark.parametrize("with_wpe", [True, False], ids=["tokens+positions", "tokens"])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", SIZES)
def test_forward(tmp_path, C, dtype, with_wpe):
    rng = np.random.default_rng(C)
    V, seq_len, B = 53, 24, 3
    N = B * seq_len
    wte, wtev = to_storage(rng.standard_normal((V, C)), dtype)
    wpe, wpev = to_storage(rng.standard_normal((seq_len, C)) * 0.1, dtype)
    tokens = rng.integers(0, V, N).astype(np.int32)
    r = run_program(
        program("embed_test", tmp_path),
        f"fwd:{dtype}:{C}",
        tmp_path,
        {
            "params": np.array([N, V, seq_len], np.int32),
            "tokens": tokens,
            "wte": wte,
            "wpe": wpe if with_wpe else np.zeros(0, F),
        },
    )
    ref = wtev[tokens]
    if with_wpe:
        pos = wpev[np.arange(N) % seq_len]
        ref = round_storage((ref.astype(F) + pos.astype(F)).astype(np.float64), dtype)
    np.testing.assert_array_equal(read_storage(r, "out", dtype, (N, C)), ref)


def skewed_tokens(rng, n, V, top=0.3):
    """a Zipf-like batch: one very frequent token (7), ties among the rest"""
    t = rng.integers(0, V, n)
    t[rng.random(n) < top] = 7
    t[rng.random(n) < 0.1] = V - 1
    return t.astype(np.int32)


@pytest.mark.parametrize("accumulate", [1, 0])
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", SIZES)
def test_backward(tmp_path, C, dtype, accumulate):
    backward_case(tmp_path, C, dtype, accumulate, 4, 16, 0.3)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("C", [100, 37])
def test_backward_bucket_longer_than_a_stage(tmp_path, C, dtype):
    """token 7 takes about 500 of 720 positions: its positions are staged in shared memory 256 at a time"""
    backward_case(tmp_path, C, dtype, 1, 9, 80, 0.7)


def backward_case(tmp_path, C, dtype, accumulate, B, seq_len, top):
    rng = np.random.default_rng(C + accumulate + B)
    V = 41
    n = B * seq_len
    tokens = skewed_tokens(rng, n, V, top)
    dx, dxv = to_storage(rng.standard_normal((n, C)), dtype)
    dwte0 = rng.standard_normal((V, C)).astype(F)
    dwpe0 = rng.standard_normal((seq_len, C)).astype(F)
    r = run_program(
        program("embed_test", tmp_path),
        f"bwd:{dtype}:{C}",
        tmp_path,
        {
            "params": np.array([B, seq_len, V, accumulate], np.int32),
            "tokens": tokens,
            "dx": dx,
            "dwte0": dwte0,
            "dwpe0": dwpe0,
        },
    )
    # the buckets: largest first, ties by token id; positions ascending within each
    tok = r.out("bucket_token", np.int32)
    start = r.out("bucket_start", np.int32)
    order = r.out("order", np.int32)
    counts = np.bincount(tokens, minlength=V)
    expect = sorted(np.flatnonzero(counts), key=lambda v: (-counts[v], v))
    np.testing.assert_array_equal(tok, expect)
    assert tok[0] == 7 and start[0] == 0 and start[-1] == n
    if top > 0.5:
        assert start[1] - start[0] > 256
    for b, v in enumerate(tok):
        np.testing.assert_array_equal(order[start[b] : start[b + 1]], np.flatnonzero(tokens == v))
    # dwte: the same float32 additions in the same order
    x32 = dxv.astype(F)
    exact_te = dwte0.copy() if accumulate else np.zeros_like(dwte0)
    for v in np.flatnonzero(counts):
        s = np.zeros(C, F)
        for p in np.flatnonzero(tokens == v):
            s = s + x32[p]
        exact_te[v] = exact_te[v] + s if accumulate else s
    exact_pe = np.zeros((seq_len, C), F)
    for b in range(B):
        exact_pe = exact_pe + x32[b * seq_len : (b + 1) * seq_len]
    if accumulate:
        exact_pe = dwpe0 + exact_pe
    got_te, got_pe = r.out("dwte", F).reshape(V, C), r.out("dwpe", F).reshape(seq_len, C)
    ref_te = (dwte0.astype(np.float64) if accumulate else 0) + np.stack([dxv[tokens == v].sum(0) for v in range(V)])
    ref_pe = (dwpe0.astype(np.float64) if accumulate else 0) + dxv.reshape(B, seq_len, C).sum(0)
    check_close(f"dwte ({dtype})", got_te, ref_te, 1e-6, 1e-6 * np.sqrt(n))
    check_close(f"dwpe ({dtype})", got_pe, ref_pe, 1e-6, 1e-6 * np.sqrt(B))
    np.testing.assert_array_equal(got_te.view(np.uint32), exact_te.view(np.uint32))
    np.testing.assert_array_equal(got_pe.view(np.uint32), exact_pe.view(np.uint32))
    np.testing.assert_array_equal(r.out("dwte_2", F).view(np.uint32), got_te.ravel().view(np.uint32))
    np.testing.assert_array_equal(r.out("dwpe_2", F).view(np.uint32), got_pe.ravel().view(np.uint32))


def test_token_outside_the_vocabulary_is_refused_in_one_line(tmp_path):
    tokens = np.array([1, 2, 41, 3], np.int32)  # V = 41: 41 is outside
    r = run_program(
        program("embed_test", tmp_path),
        "bwd:f32:37",
        tmp_path,
        {
            "params": np.array([1, 4, 41, 1], np.int32),
            "tokens": tokens,
            "dx": np.zeros(4 * 37, F),
            "dwte0": np.zeros(41 * 37, F),
            "dwpe0": np.zeros(4 * 37, F),
        },
        expect_ok=False,
    )
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "llmgen kernels: embed_buckets_build: a token id is outside [0, vocabulary)"
    ]
