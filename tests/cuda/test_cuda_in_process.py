"""The CUDA in-process runner: emulated here (host memory), with pycuda on a GPU (skipped otherwise)."""

import shutil
import subprocess

import numpy as np
import pytest

import oracle
from llmgen.codegen import Options
from llmgen.runtime.gpu import CudaTrainer
from llmgen.runtime.process import InProcessTrainer
from llmgen.spec import GPT2Spec

SPEC = GPT2Spec(n_layer=1, n_head=2, n_embd=32, vocab_size=100, max_seq_len=32)


def _gpu_ready():
    try:
        import pycuda.driver  # noqa: F401
    except Exception:  # noqa: BLE001 - ImportError, or no driver library to load
        return False
    return (
        bool(shutil.which("nvidia-smi")) and subprocess.run(["nvidia-smi", "-L"], capture_output=True).returncode == 0
    )


@pytest.mark.parametrize("dtype, tol", [("fp32", 1e-6), ("bf16", 5e-2)])
def test_emulated_cuda_buffers_match_the_c_target(tmp_path, dtype, tol):
    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 1, 2, 32, 100, 32, seed=4)
    pat = oracle.random_shards(tmp_path / "d", 100, 2000)
    x, y = (a.numpy() for a in next(oracle.batches(pat, 2, 16, 1)))
    c = InProcessTrainer(SPEC, 2, 16, tmp_path / "c", init_from=mdir)
    cu = CudaTrainer(
        SPEC.replace(dtype=dtype), 2, 16, tmp_path / "cu", init_from=mdir, options=Options(target="cuda"), emulate=True
    )
    for t in (c, cu):
        t.lib.llmgen_zero_grads()
        t.lib.llmgen_set_dloss(1.0)
        t.forward(x, y)
        t.backward()
    for name in ("h0.qkv", "grad.h0.mlp.c_fc.w", "h0.mlp.c_fc.w"):
        a, b = c.read(name), cu.read(name)
        assert a.shape == b.shape
        assert np.abs(a - b).max() <= tol * max(np.abs(a).max(), 1e-6), name


@pytest.mark.skipif(not _gpu_ready(), reason="needs pycuda and an NVIDIA GPU (the gpu extra on a GPU machine)")
def test_gpu_in_process_matches_the_c_target(tmp_path):
    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 1, 2, 32, 100, 32, seed=4)
    x = np.random.default_rng(0).integers(0, 100, (2, 16))
    c = InProcessTrainer(SPEC, 2, 16, tmp_path / "c", init_from=mdir)
    g = CudaTrainer(SPEC, 2, 16, tmp_path / "g", init_from=mdir)
    c.forward(x, x)
    g.forward(x, x)
    np.testing.assert_allclose(g.read("h0.qkv"), c.read("h0.qkv"), atol=1e-4)
    g.close()


def test_emulated_cuda_library_samples_at_smaller_shapes(tmp_path):
    """llmgen_set_batch on the CUDA target (emulated): allocated for 3 x 16, run at 2 x 5 and 1 x 9,
    the last logits of each row equal transformers' on that row alone."""
    import torch

    from llmgen.runtime.build import build_trainer
    from llmgen.runtime.process import CompiledModel

    mdir = oracle.make_gpt2_model_dir(tmp_path / "m", 1, 2, 32, 100, 32, seed=4)
    lib = build_trainer(SPEC, Options(target="cuda"), tmp_path / "cu", library=True, emulate=True)
    model = CompiledModel(lib, SPEC, 16, mdir, batch=3)
    ref = oracle.load_gpt2(mdir)
    rng = np.random.default_rng(1)
    for rows in (rng.integers(0, 100, (2, 5)), rng.integers(0, 100, (1, 9))):
        with torch.no_grad():
            want = np.stack([ref(torch.tensor(r[None])).logits[0, -1].numpy() for r in rows])
        np.testing.assert_allclose(model.last_logits(rows), want, atol=2e-5, rtol=1e-4)
