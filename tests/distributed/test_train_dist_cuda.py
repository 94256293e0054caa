"""The data-parallel CUDA trainer (`llmgen build --target cuda --distributed`, templates/common/COMM.md), run on the
CPU: the exact train.cu through g++ and the emulation headers (--emulate), its NCCL calls through emulate_nccl.h over
comm.h, started by mpirun (or torchrun style where OpenMPI is missing). On a tiny GPT-2: N ranks (2, and 3 with padded
ZeRO shards) equal one process with the same global batch (fp32: 1e-4; bf16: the tolerance below); -z 1 equals -z 0
bit for bit; one rank equals the plain build bit for bit; a checkpoint resumes bit-exactly with the same N and
closely with one process; --dtype fp8 (each FP8 tensor's amax the max over the ranks, the E4M3 weights cast from the
gathered bf16 ones) on 2 ranks equals one process within the bf16 tolerance. Also: the build without MPI
(torchrun-style variables) gives the bits of mpirun, and nvcc compiles a distributed GPT-2 bf16 train.cu for sm_90a
where nvcc and NCCL's headers are installed."""

from __future__ import annotations

import shutil
import subprocess
from unittest import mock

import pytest

import oracle
from conftest import losses_by_step, run_llmgen
from dist_helpers import Result, clean_env, free_port, have_mpi, launcher_env, mpirun
from test_train_dist import close, resume_from

T = 16
LR = ["-l", "1e-3", "-u", "2", "-c", "0.1", "-k", "cosine"]
ONE_THREAD = {"OMP_NUM_THREADS": "1"}  # ranks share the 2 cores of the CI machine
# bf16, N ranks against one process at the same global batch. The two add each weight gradient's per-token terms in
# another order (B rows per rank, then the average over the ranks), like -d's accumulation, so the fp32 gradients differ
# in their last bits; the stochastic rounding of the bf16 parameters turns that into bf16-ulp differences of some
# weights, which the next steps carry. Measured over 6 steps of this model: losses 2.1e-5, grad norms 6.1e-4 relative.
# With 3 ranks at -b 1 against -b 3 the bf16 activation gradients also round differently (each rank's loss scale
# 1/(B*T) is 3x one process's, not a power of 2): grad norm 2.3e-3 at step 1, before any update. The bounds are those
# of tests/matrix.py's bf16 table for -d accumulation (5e-4) and for grad norms (1e-2).
BF16_LOSS, BF16_NORM = 5e-4, 1e-2


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("train_dist_cuda")
    oracle.make_gpt2_model_dir(d / "model", n_layer=2, n_head=4, n_embd=64, vocab_size=500, n_positions=32, seed=3)
    pattern = oracle.random_shards(d / "data", 500, 20000, seed=1)
    config = d / "model" / "config.json"
    for dtype in ("fp32", "bf16"):
        common = [config, "--target", "cuda", "--emulate", "--dtype", dtype]
        run_llmgen("build", *common, "-o", d / f"single_{dtype}")
        run_llmgen("build", *common, "--distributed", "-o", d / f"dist_{dtype}")  # MPI's flags where MPI is installed
    nompi = d / "dist_fp32" / "train"
    if have_mpi():  # the same source without MPI: torchrun-style variables and the file rendezvous only
        from llmgen.runtime import build

        nompi = d / "nompi" / "train"
        nompi.parent.mkdir()
        shutil.copy(d / "dist_fp32" / "train.cu", nompi.parent / "train.cu")
        with mock.patch.object(build, "mpi_flags", lambda: ([], [])):
            build.build_cuda(nompi.parent / "train.cu", nompi, emulate=True, nccl=True)
    data = ["-i", pattern, "-e", d / "model", "-t", T, "-v", 0]
    return dict(dir=d, model=d / "model", data=[str(a) for a in data], nompi=nompi)


def binary(setup, kind, dtype="fp32"):
    return setup["dir"] / f"{kind}_{dtype}" / "train"


def run_one(setup, kind, dtype, flags, out):
    """one process of the plain (kind "single") or the distributed ("dist") emulated build"""
    argv = [binary(setup, kind, dtype), *setup["data"], *flags, "-o", out]
    r = subprocess.run(list(map(str, argv)), capture_output=True, text=True, env=clean_env(ONE_THREAD), timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def run_ranks(setup, n, dtype, flags, out, prog=None):
    """N ranks of the distributed build: under mpirun where MPI is installed, else torchrun style (the same bits)"""
    prog = prog or binary(setup, "dist", dtype)
    argv = [*setup["data"], *map(str, flags), "-o", str(out)]
    if have_mpi() and prog != setup["nompi"]:
        r = mpirun(n, [prog, *argv], ONE_THREAD, 300)
    else:
        port, pipe = free_port(), subprocess.PIPE
        envs = [clean_env({**launcher_env("torchrun", q, n, port), **ONE_THREAD}) for q in range(n)]
        procs = [subprocess.Popen([str(prog), *argv], env=e, stdout=pipe, stderr=pipe, text=True) for e in envs]
        outs = [p.communicate(timeout=300) for p in procs]
        rc = next((p.returncode for p in procs if p.returncode), 0)
        r = Result(rc, outs[0][0], "".join(err for _, err in outs), 0.0)
    assert r.returncode == 0, r.text
    return r


def same_run(a, b, step):
    """the same logged losses and norms, and the same state.bin of step `step`"""
    last = f"ckpt_{step:08d}/state.bin"
    return losses_by_step(a) == losses_by_step(b) and (a / last).read_bytes() == (b / last).read_bytes()


@pytest.mark.parametrize("n, accum", [(2, 2), (3, 1)])
def test_fp32_n_ranks_equal_one_process(setup, tmp_path, n, accum):
    """-b 2 on N ranks against -b 2N on one process, 6 AdamW steps: losses and grad norms within 1e-4; -z 0 gives the
    bits of -z 1 (the default), state.bin included. 3 ranks pad the shards (134912 parameters are not a multiple)."""
    steps, B = 6, 2
    flags = ["-b", B, "-d", B * n * T * accum, "-x", steps, *LR]
    r = run_ranks(setup, n, "fp32", flags, tmp_path / "z1")
    assert f"data parallel: {n} processes (" in r.stdout and "-z 1 (AdamW moments sharded)" in r.stdout, r.stdout
    assert "target cuda-emulated" in r.stdout and r.stdout.count("step 1/") == 1
    run_ranks(setup, n, "fp32", [*flags, "-z", 0], tmp_path / "z0")
    assert same_run(tmp_path / "z1", tmp_path / "z0", steps), "-z 1 and -z 0 differ"
    run_one(setup, "single", "fp32", ["-b", B * n, *flags[2:]], tmp_path / "one")
    z1, one = losses_by_step(tmp_path / "z1"), losses_by_step(tmp_path / "one")
    assert sorted(z1) == sorted(one) == list(range(1, steps + 1))
    for s in one:
        assert close(z1[s][0], one[s][0]) and close(z1[s][1], one[s][1]), (s, z1[s], one[s])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_one_rank_is_the_plain_build_bit_for_bit(setup, tmp_path, dtype):
    flags = ["-b", 4, "-d", 128, "-x", 4, *LR]
    run_one(setup, "single", dtype, flags, tmp_path / "single")
    run_one(setup, "dist", dtype, flags, tmp_path / "dist")
    assert same_run(tmp_path / "single", tmp_path / "dist", 4)


@pytest.mark.parametrize("n, B", [(2, 2), (3, 1)])
def test_bf16_n_ranks_equal_one_process(setup, tmp_path, n, B):
    """bf16: the fp32 master and the moments sharded, the bf16 parameters all-gathered (3 ranks: padded shards);
    within BF16_LOSS / BF16_NORM of one process, and -z 1 equals -z 0 bit for bit"""
    steps, flags = 6, ["-d", 2 * n * B * T, "-x", 6, *LR]
    run_ranks(setup, n, "bf16", ["-b", B, *flags], tmp_path / "z1")
    run_ranks(setup, n, "bf16", ["-b", B, *flags, "-z", 0], tmp_path / "z0")
    assert same_run(tmp_path / "z1", tmp_path / "z0", steps), "-z 1 and -z 0 differ"
    run_one(setup, "single", "bf16", ["-b", n * B, *flags], tmp_path / "one")
    z1, one = losses_by_step(tmp_path / "z1"), losses_by_step(tmp_path / "one")
    assert sorted(z1) == sorted(one) == list(range(1, steps + 1))
    for s in one:
        assert close(z1[s][0], one[s][0], BF16_LOSS) and close(z1[s][1], one[s][1], BF16_NORM), (s, z1[s], one[s])


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_resume_same_n_bit_exact(setup, tmp_path, dtype):
    """6 steps on 2 ranks with checkpoints every 3; from step 3 again on 2 ranks: the same bits. The checkpoint is
    the single-process layout: the plain build resumes from it at -b 4 (fp32: within 1e-4)."""
    flags = ["-d", 128, "-x", 6, "-n", 3, *LR]
    run_ranks(setup, 2, dtype, ["-b", 2, *flags], tmp_path / "full")
    resume_from(tmp_path / "full", 3, tmp_path / "same")
    r = run_ranks(setup, 2, dtype, ["-b", 2, *flags, "-y", 1], tmp_path / "same")
    assert "resumed from" in r.stdout and "at step 3" in r.stdout
    assert same_run(tmp_path / "full", tmp_path / "same", 6)
    resume_from(tmp_path / "full", 3, tmp_path / "one")
    run_one(setup, "single", dtype, ["-b", 4, *flags, "-y", 1], tmp_path / "one")
    full, one = losses_by_step(tmp_path / "full"), losses_by_step(tmp_path / "one")
    rel = (1e-4, 1e-4) if dtype == "fp32" else (BF16_LOSS, BF16_NORM)
    for s in (4, 5, 6):
        assert close(one[s][0], full[s][0], rel[0]) and close(one[s][1], full[s][1], rel[1]), (s, one[s], full[s])


@pytest.mark.skipif(not have_mpi(), reason="without MPI every run of this file starts torchrun style already")
def test_torchrun_without_mpi_gives_the_bits_of_mpirun(setup, tmp_path):
    flags = ["-b", 2, "-x", 3, *LR]
    r = run_ranks(setup, 2, "fp32", flags, tmp_path / "tcp", prog=setup["nompi"])
    assert "(tcp via" in r.stdout, r.stdout
    run_ranks(setup, 2, "fp32", flags, tmp_path / "mpi")
    assert losses_by_step(tmp_path / "tcp") == losses_by_step(tmp_path / "mpi")


def test_nvcc_compiles_distributed_gpt2_bf16(tmp_path):
    """nvcc builds GPT-2 (124M) bf16 --distributed for sm_90a, linked to NCCL (and MPI where installed); nothing
    runs (no GPU needed)"""
    from llmgen.codegen import Options, render
    from llmgen.runtime.build import BuildError, build_cuda, cublas_dirs, cuda_home, nccl_dirs
    from llmgen.spec import load_spec

    if not shutil.which("nvcc") and not (cuda_home() and (cuda_home() / "bin" / "nvcc").exists()):
        pytest.skip("nvcc not found (the CUDA toolkit)")
    if cublas_dirs() is None:
        pytest.skip("cuBLASLt not found (pip install nvidia-cublas)")
    if nccl_dirs() is None:
        pytest.skip("NCCL's headers and library not found (NCCL_HOME, the CUDA install, /usr, nvidia-nccl-cu13)")
    src = tmp_path / "train.cu"
    src.write_text(render(load_spec("gpt2", "bf16"), Options(target="cuda", distributed=True)))
    try:
        build_cuda(src, tmp_path / "train", archs=["sm_90a"], nccl=True)
    except BuildError as e:
        pytest.fail(str(e)[-4000:])
    assert (tmp_path / "train").is_file()


@pytest.mark.parametrize("name, dtype", [("gpt2", "bf16"), ("gpt2", "fp32"), ("llama3.2-1b", "bf16")])
def test_emitted_distributed_cuda_source(name, dtype):
    """the house rules of tests/test_program_shape.py for the distributed CUDA source (no line over 120 columns, no
    blank line before a closing brace, no trailing whitespace); its collectives are NCCL's, on stream 0 (where the
    kernels run) or, for the gradients' exchange that overlaps the backward, on comm_stream; the backward starts a
    layer's exchange at the end of its loop body; the plain build has none of it"""
    from llmgen.codegen import Options, render
    from llmgen.spec import load_spec

    spec = load_spec(name, dtype)
    lines = render(spec, Options(target="cuda", distributed=True)).splitlines()
    assert not [(i + 1, x) for i, x in enumerate(lines) if len(x) > 120]
    assert not [i + 1 for i in range(1, len(lines)) if lines[i].strip().startswith("}") and not lines[i - 1].strip()]
    assert not [i + 1 for i, x in enumerate(lines) if x != x.rstrip()]
    src = "\n".join(lines)
    for call in ("ncclReduceScatter(", "ncclReduce(", "ncclAllReduce(", "ncclAllGather(", "ncclCommInitRank("):
        assert call in src, call
    collectives = ("ncclReduceScatter(", "ncclReduce(", "ncclAllReduce(", "ncclAllGather(")
    calls = [x for x in lines if "NCCL_CHECK(" in x and any(c in x for c in collectives)]
    assert len(calls) >= 7 and all(x.endswith(("nccl, 0));", "nccl, comm_stream));")) for x in calls), calls
    assert "        layer_grads_done(l);   /* layer l's gradients are final: start their exchange */\n    }" in src
    assert "nccl" not in render(spec, Options(target="cuda")).lower()


@pytest.fixture(scope="module")
def fp8_builds(setup):
    """the fp8 plain and distributed builds of the same model (gpt2-tiny's shapes: every block linear a multiple of
    16, so every one runs in FP8 once LLMGEN_FP8_MIN_WEIGHTS is 0)"""
    d, config = setup["dir"], setup["model"] / "config.json"
    common = [config, "--target", "cuda", "--emulate", "--dtype", "fp8"]
    with mock.patch.dict("os.environ", {"LLMGEN_FP8_MIN_WEIGHTS": "0"}):
        run_llmgen("build", *common, "-o", d / "single_fp8")
        run_llmgen("build", *common, "--distributed", "-o", d / "dist_fp8")
    assert "fp8_agree_amax" in (d / "dist_fp8" / "train.cu").read_text()
    return setup


def test_fp8_two_ranks_equal_one_process(fp8_builds, tmp_path):
    """--dtype fp8, -b 2 on 2 ranks against -b 4 on one process, 6 AdamW steps. With the amaxes agreed over the
    ranks every rank casts with the scale one process takes for the whole batch, so each row's FP8 codes are the
    single process's (the per-rank loss scale 1/(B*T) is 2x, a power of 2: dY's scale halves exactly, its codes stay);
    what differs is the weight gradients' summation order, as in bf16: within BF16_LOSS / BF16_NORM. -z 1 equals -z 0
    bit for bit (the same gathered weights, so the same E4M3 copies and scales on every rank); one rank of the
    distributed build is the plain build bit for bit."""
    steps, n, B = 6, 2, 2
    flags = ["-d", 2 * n * B * T, "-x", steps, *LR]
    run_ranks(fp8_builds, n, "fp8", ["-b", B, *flags], tmp_path / "z1")
    run_ranks(fp8_builds, n, "fp8", ["-b", B, *flags, "-z", 0], tmp_path / "z0")
    assert same_run(tmp_path / "z1", tmp_path / "z0", steps), "-z 1 and -z 0 differ"
    run_one(fp8_builds, "single", "fp8", ["-b", n * B, *flags], tmp_path / "one")
    z1, one = losses_by_step(tmp_path / "z1"), losses_by_step(tmp_path / "one")
    assert sorted(z1) == sorted(one) == list(range(1, steps + 1))
    worst = max(max(abs(z1[s][0] / one[s][0] - 1), abs(z1[s][1] / one[s][1] - 1)) for s in one)
    print(f"fp8 2 ranks against one process: worst relative loss / norm difference {worst:.2e}")
    for s in one:
        assert close(z1[s][0], one[s][0], BF16_LOSS) and close(z1[s][1], one[s][1], BF16_NORM), (s, z1[s], one[s])
    flags = ["-b", 4, "-d", 128, "-x", 3, *LR]
    run_one(fp8_builds, "single", "fp8", flags, tmp_path / "single")
    run_one(fp8_builds, "dist", "fp8", flags, tmp_path / "dist")
    assert same_run(tmp_path / "single", tmp_path / "dist", 3)


# the test's own hook, pasted into a copy of the distributed fp8 train.cu at the start of dist_free (after the last
# step, every rank): this rank's Fp8Metas (scales, inverse scales, amaxes of the last casts) and E4M3 weights, raw
FP8_DUMP_HOOK = """    {   /* test hook: this rank's FP8 state */
        CUDA_CHECK(cudaDeviceSynchronize());
        const size_t nm = sizeof(Fp8Meta) * FP8_METAS;
        char *h = (char *)malloc(nm + FP8_WEIGHT_BYTES), path[1024];
        CUDA_CHECK(cudaMemcpy(h, fp8_meta_mem, nm, cudaMemcpyDeviceToHost));
        CUDA_CHECK(cudaMemcpy(h + nm, fp8_weights_mem, FP8_WEIGHT_BYTES, cudaMemcpyDeviceToHost));
        snprintf(path, sizeof path, "%s/fp8_r%d.bin", getenv("LLMGEN_TEST_FP8_DUMP_DIR"), comm.rank);
        FILE *f = fopen(path, "wb");
        fwrite(h, 1, nm + FP8_WEIGHT_BYTES, f);
        fclose(f);
        free(h);
    }
"""


def test_fp8_ranks_hold_the_same_scales_and_weights(fp8_builds, tmp_path):
    """After 3 steps on 2 ranks every rank holds the same Fp8Metas (the scales of the last casts of x, W and dY) and
    the same E4M3 weights, bit for bit. The same hook in a build whose amax agreement is switched off shows that the
    check sees a difference: the ranks' activation scales then differ (their batches do)."""
    from llmgen.runtime.build import build_cuda

    src = (fp8_builds["dir"] / "dist_fp8" / "train.cu").read_text()
    head = "static void dist_free(void) {\n    if (comm.world_size == 1) return;\n"
    agree = "    if (comm.world_size > 1)\n        NCCL_CHECK(ncclAllReduce(fp8_partials"
    assert head in src and agree in src
    hooked = src.replace(head, head + FP8_DUMP_HOOK)
    dumps = {}
    for kind, text in (("agreed", hooked), ("per-rank", hooked.replace(agree, agree.replace("> 1", "> 99")))):
        d = tmp_path / kind
        d.mkdir()
        (d / "train.cu").write_text(text)
        prog = build_cuda(d / "train.cu", d / "train", emulate=True, nccl=True)
        flags = ["-b", 2, "-d", 128, "-x", 3, *LR]
        with mock.patch.dict(ONE_THREAD, {"LLMGEN_TEST_FP8_DUMP_DIR": str(d)}):
            run_ranks(fp8_builds, 2, "fp8", flags, d / "run", prog=prog)
        dumps[kind] = [(d / f"fp8_r{r}.bin").read_bytes() for r in range(2)]
    assert len(dumps["agreed"][0]) > 0 and dumps["agreed"][0] == dumps["agreed"][1]
    assert dumps["per-rank"][0] != dumps["per-rank"][1]
