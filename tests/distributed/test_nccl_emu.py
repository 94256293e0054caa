"""templates/cuda/emulate_nccl.h: the NCCL calls of a data-parallel trainer, compiled as CUDA source with g++
-DLLMGEN_EMULATE (emulate.h) and run as N processes, checked bit for bit against numpy's rank-order references
(fp32, fp64 and bf16; ncclSum and ncclAvg; all-reduce, padded reduce-scatter, all-gather, broadcast; in place
and out of place). The program is tests/distributed/nccl_emu.cu."""

from __future__ import annotations

import pytest

from dist_helpers import (
    MPI_MISSING,
    assert_order_matters,
    check_outputs,
    have_mpi,
    launcher_env,  # noqa: F401
    make_inputs,
    mpirun,
    programs,
    ranks,
    free_port,
)

N_ELEMS = 1001  # not a multiple of 2 or 3: uneven chunks, padded shards


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
    n = check_outputs(tmp_path, ins, world, N_ELEMS)
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


def test_emulated_nccl_single_process(programs, tmp_path, ranks):
    """One process, no launcher: ncclCommInitRank(1 rank) works and every collective is the identity (avg / 1)."""
    ins = make_inputs(tmp_path, 1, N_ELEMS, seed=31)
    rk = ranks()
    rk.start([programs.get("nccl_emu_tcp"), tmp_path, N_ELEMS], {"OMP_NUM_THREADS": 1})
    assert all(x.returncode == 0 for x in rk.wait(120)), rk.logs()
    check_outputs(tmp_path, ins, 1, N_ELEMS)
