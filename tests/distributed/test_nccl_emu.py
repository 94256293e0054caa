"""templates/cuda/emulate_nccl.h: the NCCL calls of a data-parallel trainer, compiled as CUDA source with g++
-DLLMGEN_EMULATE (emulate.h) and run as N processes, checked bit for bit against numpy's rank-order references
(fp32, fp64 and bf16; ncclSum and ncclAvg; all-reduce, padded reduce-scatter, all-gather, broadcast, reduce to a
root (the last rank, and rank 0 in place); in place and out of place). The program is tests/distributed/nccl_emu.cu."""

from __future__ import annotations

import pytest

import numpy as np

from dist_helpers import (
    MPI_MISSING,
    OPS,
    TYPES,
    assert_order_matters,
    check_outputs,
    diff_report,
    have_mpi,
    launcher_env,  # noqa: F401
    make_inputs,
    mpirun,
    programs,
    ranks,
    reference,
    same_bits,
    free_port,
)

N_ELEMS = 1001  # not a multiple of 2 or 3: uneven chunks, padded shards


def check_reduce(d, ins: dict[str, list[np.ndarray]], world: int) -> int:
    """ncclReduce's outputs (DIR/reduce_r<rank>_*.bin): the rank-order result on the root, bit for bit; elsewhere the
    buffer untouched (zeros out of place to the last rank; the rank's own input in place to rank 0)."""
    checks = 0
    for t, xs in ins.items():
        dt = TYPES[t]
        for op in OPS:
            ref = reference(xs, t, op)
            for kind, root in (("red", world - 1), ("redi", 0)):
                for r in range(world):
                    name = f"{kind}_{t}_{op}"
                    got = np.fromfile(d / f"reduce_r{r}_{name}.bin", dtype=dt)
                    if r == root:
                        e = ref
                    else:
                        e = xs[r] if kind == "redi" else np.zeros_like(xs[r])
                    assert same_bits(got, e), f"rank {r} {name} (root {root}): {diff_report(name, got, e)}"
                    checks += 1
    return checks


@pytest.mark.skipif(not have_mpi(), reason=MPI_MISSING)
@pytest.mark.parametrize("world", [2, 3])
def test_emulated_nccl_mpirun(programs, tmp_path, world):
    ins = make_inputs(tmp_path, world, N_ELEMS, seed=20 + world)
    if world >= 3:
        assert_order_matters(ins)
    res = mpirun(world, [programs.get("nccl_emu"), tmp_path, N_ELEMS], env={"OMP_NUM_THREADS": 1})
    assert res.returncode == 0, res.text
    for r in range(world):
        assert f"rank {r}: negative checks ok" in res.stdout
    n = check_outputs(tmp_path, ins, world, N_ELEMS) + check_reduce(tmp_path, ins, world)
    print(f"emulated NCCL, mpirun -np {world}: {n} outputs bit-identical to numpy's rank-order results")


def test_emulated_nccl_tcp(programs, tmp_path, ranks):
    """The same program built without MPI, started torchrun-style: the NCCL id and the collectives travel over
    comm.h's TCP mesh."""
    world = 2
    data = tmp_path / "data"
    ins = make_inputs(data, world, N_ELEMS, seed=30)
    port = free_port()
    rk = ranks()
    for r in range(world):
        rk.start(
            [programs.get("nccl_emu_tcp"), data, N_ELEMS],
            {**launcher_env("torchrun", r, world, port=port), "OMP_NUM_THREADS": 1},
        )
    assert all(x.returncode == 0 for x in rk.wait(120)), rk.logs()
    check_outputs(data, ins, world, N_ELEMS)
    check_reduce(data, ins, world)


def test_emulated_nccl_single_process(programs, tmp_path, ranks):
    """One process, no launcher: ncclCommInitRank(1 rank) works and every collective is the identity (avg / 1)."""
    ins = make_inputs(tmp_path, 1, N_ELEMS, seed=31)
    rk = ranks()
    rk.start([programs.get("nccl_emu_tcp"), tmp_path, N_ELEMS], {"OMP_NUM_THREADS": 1})
    assert all(x.returncode == 0 for x in rk.wait(120)), rk.logs()
    check_outputs(tmp_path, ins, 1, N_ELEMS)
    check_reduce(tmp_path, ins, 1)
