"""Build-and-launch helpers for the multi-process tests of templates/common/comm.h and
templates/cuda/emulate_nccl.h (imported by tests/distributed/test_*.py; deliberately not a conftest.py, so
that `from conftest import ...` keeps meaning tests/conftest.py).

The programs (comm_driver.c, nccl_emu.cu) read per-rank inputs written here and write their results; the
references are computed here with numpy: sums in rank order 0..N-1 in float32 (float64 for f64), bf16 widened
exactly and rounded once to nearest even, avg = sum / N before rounding.

(The folder is tests/distributed, not tests/dist: the repository's .gitignore ignores every folder named dist.)
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import time

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[2]
HERE = pathlib.Path(__file__).resolve().parent
COMMON = REPO / "templates" / "common"
CUDA_TEMPLATES = REPO / "templates" / "cuda"

MPI_MISSING = "mpicc/mpirun not found: install OpenMPI (apt-get install openmpi-bin libopenmpi-dev)"
# mpirun as root, and more ranks than cores (the CI machine has 2)
MPI_ENV = {
    "OMPI_ALLOW_RUN_AS_ROOT": "1",
    "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
    "OMPI_MCA_rmaps_base_oversubscribe": "1",
}
# variables a launcher sets: never inherited from the test's own environment (CI might run under Slurm)
LAUNCHER_PREFIXES = (
    "RANK",
    "WORLD_SIZE",
    "LOCAL_RANK",
    "LOCAL_WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "SLURM_",
    "OMPI_COMM_WORLD",
    "PMI_",
    "PMIX_",
    "LLMGEN_",
)

TYPES = {"f32": np.float32, "f64": np.float64, "bf16": np.uint16}
OPS = ("sum", "avg")


def have_mpi() -> bool:
    return shutil.which("mpicc") is not None and shutil.which("mpirun") is not None


def clean_env(extra: dict | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith(LAUNCHER_PREFIXES)}
    env.update(MPI_ENV)
    env.update({k: str(v) for k, v in (extra or {}).items()})
    return env


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---- building ------------------------------------------------------------------------------------
def mpi_flags() -> tuple[list[str], list[str]]:
    comp = subprocess.run(["mpicc", "--showme:compile"], capture_output=True, text=True, check=True).stdout.split()
    link = subprocess.run(["mpicc", "--showme:link"], capture_output=True, text=True, check=True).stdout.split()
    return comp, link


def cuda_include() -> pathlib.Path | None:
    """Where cuda_runtime.h lives ($CUDA_HOME, next to nvcc, /usr/local/cuda): the emulation needs the headers."""
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        roots.append(str(pathlib.Path(nvcc).resolve().parents[1]))
    roots.append("/usr/local/cuda")
    for root in roots:
        if root and (pathlib.Path(root) / "include" / "cuda_runtime.h").is_file():
            return pathlib.Path(root) / "include"
    return None


def emulate_dir() -> pathlib.Path:
    """The folder holding emulate.h (templates/cuda today; templates/cuda/emulate/ after the move)."""
    for d in (CUDA_TEMPLATES, CUDA_TEMPLATES / "emulate"):
        if (d / "emulate.h").is_file():
            return d
    pytest.fail("templates/cuda/emulate.h not found (moved?)")


def compile_commands(outdir: pathlib.Path) -> dict[str, list[str]]:
    """name -> compiler command line, for every program variant this machine can build."""
    drv = str(HERE / "comm_driver.c")
    warn = ["-Wall", "-Wextra", "-Werror"]
    cmds = {}
    if shutil.which("gcc"):
        cmds["c"] = ["gcc", "-std=gnu11", "-O2", *warn, f"-I{COMMON}", drv, "-o", str(outdir / "drv_c")]
    if shutil.which("g++"):
        cmds["cxx"] = [
            "g++",
            "-std=c++17",
            "-x",
            "c++",
            "-O2",
            *warn,
            f"-I{COMMON}",
            drv,
            "-o",
            str(outdir / "drv_cxx"),
        ]
    if have_mpi():
        comp, link = mpi_flags()
        cmds["mpi"] = [
            "mpicc",
            "-std=gnu11",
            "-O2",
            *warn,
            "-DLLMGEN_MPI",
            f"-I{COMMON}",
            drv,
            "-o",
            str(outdir / "drv_mpi"),
        ]
        if shutil.which("g++"):
            cmds["cxx_mpi"] = [
                "g++",
                "-std=c++17",
                "-x",
                "c++",
                "-O2",
                *warn,
                "-DLLMGEN_MPI",
                *comp,
                f"-I{COMMON}",
                drv,
                "-o",
                str(outdir / "drv_cxx_mpi"),
                *link,
            ]
    inc = cuda_include()
    if inc is not None and shutil.which("g++"):
        # the build line of the emulated train.cu (emulate.h's contract), with MPI and without
        emu = [
            "g++",
            "-std=c++17",
            "-O2",
            "-x",
            "c++",
            "-DLLMGEN_EMULATE",
            "-fno-strict-aliasing",
            "-fopenmp",
            "-Wall",
            "-Wextra",
            f"-I{emulate_dir()}",
            f"-I{CUDA_TEMPLATES}",
            f"-I{COMMON}",
            f"-I{inc}",
            str(HERE / "nccl_emu.cu"),
            "-o",
        ]
        cmds["nccl_emu_tcp"] = [*emu, str(outdir / "nccl_emu_tcp")]
        if have_mpi():
            comp, link = mpi_flags()
            cmds["nccl_emu"] = [*emu, str(outdir / "nccl_emu"), "-DLLMGEN_MPI", *comp, *link]
    return cmds


@dataclasses.dataclass
class Built:
    path: pathlib.Path | None
    log: str


class Programs:
    """Every variant compiled once per session, two at a time, on first use."""

    def __init__(self, outdir: pathlib.Path):
        self.outdir = outdir
        self.built: dict[str, Built] | None = None

    def _build_all(self) -> None:
        cmds = compile_commands(self.outdir)

        def build(name: str) -> tuple[str, Built]:
            out = pathlib.Path(cmds[name][cmds[name].index("-o") + 1])
            proc = subprocess.run(cmds[name], capture_output=True, text=True)
            return name, Built(
                out if proc.returncode == 0 else None, " ".join(cmds[name]) + "\n" + proc.stdout + proc.stderr
            )

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as ex:
            self.built = dict(ex.map(build, cmds))

    def get(self, name: str) -> pathlib.Path:
        if self.built is None:
            self._build_all()
        if name not in self.built:
            pytest.skip(
                MPI_MISSING
                if name in ("mpi", "cxx_mpi", "nccl_emu") and not have_mpi()
                else "CUDA headers (cuda_runtime.h) not found"
                if name.startswith("nccl_emu")
                else f"no compiler for the {name} variant"
            )
        b = self.built[name]
        if b.path is None:
            pytest.fail(f"building {name} failed:\n{b.log}")
        return b.path


_PROGRAMS: Programs | None = None


@pytest.fixture(scope="session")
def programs(tmp_path_factory) -> Programs:
    global _PROGRAMS
    if _PROGRAMS is None:
        _PROGRAMS = Programs(tmp_path_factory.mktemp("dist_build"))
    return _PROGRAMS


# ---- inputs and references -------------------------------------------------------------------------
def bf16_to_f32(bits: np.ndarray) -> np.ndarray:
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x: np.ndarray) -> np.ndarray:
    """Round-to-nearest-even float32 -> bf16 bits (NaN kept quiet)."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    u = x.view(np.uint32).astype(np.uint64)
    rounded = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    return np.where(np.isnan(x), ((u >> 16) | 0x40).astype(np.uint16), rounded)


def make_inputs(d: pathlib.Path, world: int, n: int, seed: int = 0) -> dict[str, list[np.ndarray]]:
    """Per-rank inputs with magnitudes from 1e-4 to 1e4 (so the order of a sum shows in its bits), plus, for
    bf16, exact rounding ties in the first elements. Written as DIR/in_r<rank>_<type>.bin."""
    assert n >= 8
    rng = np.random.default_rng(seed)
    d.mkdir(parents=True, exist_ok=True)
    ins: dict[str, list[np.ndarray]] = {}
    for t in ("f32", "f64"):
        x = rng.standard_normal((world, n)) * 10.0 ** rng.uniform(-4, 4, (world, n))
        ins[t] = [x[r].astype(TYPES[t]) for r in range(world)]
    x = (rng.standard_normal((world, n)) * 10.0 ** rng.uniform(-2, 2, (world, n))).astype(np.float32)
    # ties: 1 + 2^-8 lies halfway between bf16 1.0 and 1.0078125 (-> 1.0, even); 1.0078125 + 2^-8 halfway
    # between 0x3F81 and 0x3F82 (-> 0x3F82); the others add exact zeros there
    x[:, :4] = 0.0
    x[0, :4] = [1.0, 1.0078125, -1.0, 3.0]
    if world > 1:
        x[1, :4] = [2.0**-8, 2.0**-8, -(2.0**-8), 2.0**-7 * 3]
    ins["bf16"] = [f32_to_bf16(x[r]) for r in range(world)]
    for t, arrs in ins.items():
        for r, a in enumerate(arrs):
            a.tofile(d / f"in_r{r}_{t}.bin")
    return ins


def reference(xs: list[np.ndarray], t: str, op: str) -> np.ndarray:
    """The documented result: rank-order sum in f32 (f64 for f64), / N for avg, bf16 rounded once."""
    vals = [bf16_to_f32(x) if t == "bf16" else x for x in xs]
    acc = vals[0].copy()
    for v in vals[1:]:
        acc = acc + v
    if op == "avg":
        acc = acc / acc.dtype.type(len(xs))
    return f32_to_bf16(acc) if t == "bf16" else acc


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a.view(np.uint8), b.view(np.uint8))


def diff_report(name: str, got: np.ndarray, ref: np.ndarray) -> str:
    """How many elements differ in their bits, and the largest difference (llm.c style)."""
    if got.shape != ref.shape:
        return f"{name}: {got.shape[0]} elements, expected {ref.shape[0]}"
    uint = {1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[got.dtype.itemsize]
    nbad = int(np.sum(got.view(uint) != ref.view(uint)))
    g = bf16_to_f32(got) if got.dtype == np.uint16 else got
    r = bf16_to_f32(ref) if ref.dtype == np.uint16 else ref
    diff = float(np.max(np.abs(g.astype(np.float64) - r.astype(np.float64)))) if len(g) else 0.0
    return f"{name}: {nbad} of {len(got)} elements differ, max |diff| {diff:.3g}"


def check_outputs(d: pathlib.Path, ins: dict[str, list[np.ndarray]], world: int, n: int) -> int:
    """Every output file of every rank against the reference, bit for bit. Returns the number of checks."""
    shard = -(-n // world)
    padded = shard * world
    checks = 0
    for t, xs in ins.items():
        dt = TYPES[t]
        for op in OPS:
            ref = reference(xs, t, op)
            ref_pad = reference([np.concatenate([x, np.zeros(padded - n, dt)]) for x in xs], t, op)
            for r in range(world):
                expect = {
                    "ar": ref,
                    "ari": ref,
                    "rs": ref_pad[r * shard : (r + 1) * shard],
                    "rsi": ref_pad[r * shard : (r + 1) * shard],
                    "agi": ref_pad,
                    "ag": ref_pad,
                }
                for kind, e in expect.items():
                    name = f"{kind}_{t}_{op}"
                    got = np.fromfile(d / f"out_r{r}_{name}.bin", dtype=dt)
                    assert same_bits(got, e), (
                        f"rank {r} {name} differs from numpy's rank-order result: {diff_report(name, got, e)}"
                    )
                    checks += 1
        for r in range(world):
            got = np.fromfile(d / f"out_r{r}_bc_{t}.bin", dtype=dt)
            assert same_bits(got, xs[world - 1]), f"rank {r}: broadcast of {t} from rank {world - 1} differs"
            checks += 1
    # every rank holds the same bits (implied above; said once more, file by file)
    for f in sorted(d.glob("out_r0_*.bin")):
        for r in range(1, world):
            other = d / f.name.replace("out_r0_", f"out_r{r}_")
            if f.name.startswith(("out_r0_rs_", "out_r0_rsi_")):
                continue  # shards differ by design
            assert f.read_bytes() == other.read_bytes(), f"{other.name} differs from {f.name}"
    return checks


def assert_order_matters(ins: dict[str, list[np.ndarray]]) -> None:
    """The inputs can tell rank order from another order (so the bit-exact checks can fail)."""
    xs = ins["f32"]
    fwd = reference(xs, "f32", "sum")
    rev = reference(xs[::-1], "f32", "sum")
    assert not same_bits(fwd, rev), "test data too tame: reversed-order sums equal rank-order sums"


def read_info(d: pathlib.Path, r: int) -> dict[str, str]:
    out = {}
    for line in (d / f"info_r{r}.txt").read_text().splitlines():
        k, _, v = line.partition(" ")
        out[k] = v
    return out


# ---- launching -------------------------------------------------------------------------------------
@dataclasses.dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str
    seconds: float

    @property
    def text(self) -> str:
        return self.stdout + self.stderr


def mpirun(
    nproc: int | None, argv: list[str], env: dict | None = None, timeout: float = 120, extra: list[str] | None = None
) -> Result:
    """mpirun -np N argv (N None: argv holds the MPMD `-np a prog : -np b prog` spec itself)."""
    env = clean_env(env)
    forward = [a for k in env if k.startswith("LLMGEN_") for a in ("-x", k)]
    cmd = [
        "mpirun",
        "--allow-run-as-root",
        "--oversubscribe",
        *(extra or []),
        *forward,
        *(["-np", str(nproc)] if nproc else []),
        *map(str, argv),
    ]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    return Result(p.returncode, p.stdout, p.stderr, time.monotonic() - t0)


def launcher_env(
    launcher: str,
    rank: int,
    world: int,
    port: int | None = None,
    rendezvous: pathlib.Path | None = None,
    run_id: str = "run-1",
    master: str = "127.0.0.1",
) -> dict:
    """The variables torchrun, Slurm (srun + the user's MASTER_ADDR/PORT) or the file rendezvous would give."""
    if launcher == "torchrun":
        return {
            "RANK": rank,
            "WORLD_SIZE": world,
            "LOCAL_RANK": rank,
            "LOCAL_WORLD_SIZE": world,
            "MASTER_ADDR": master,
            "MASTER_PORT": port,
        }
    if launcher == "slurm":
        return {
            "SLURM_PROCID": rank,
            "SLURM_NTASKS": world,
            "SLURM_STEP_NUM_TASKS": world,
            "SLURM_LOCALID": rank,
            "SLURM_JOB_ID": "4242",
            "SLURM_STEP_ID": "0",
            "MASTER_ADDR": master,
            "MASTER_PORT": port,
        }
    if launcher == "file":
        return {"RANK": rank, "WORLD_SIZE": world, "LLMGEN_RENDEZVOUS_DIR": rendezvous, "LLMGEN_RUN_ID": run_id}
    raise ValueError(launcher)


class Ranks:
    """N processes started directly (no mpirun), their output in files (no pipe can fill up)."""

    def __init__(self, logdir: pathlib.Path):
        self.logdir = logdir
        logdir.mkdir(parents=True, exist_ok=True)
        self.procs: list[subprocess.Popen] = []
        self.t0 = time.monotonic()

    def start(self, argv: list, env: dict, prefix: list[str] | None = None) -> subprocess.Popen:
        r = len(self.procs)
        out = open(self.logdir / f"stdout_{r}", "w")
        err = open(self.logdir / f"stderr_{r}", "w")
        p = subprocess.Popen(
            [*(prefix or []), *map(str, argv)], stdout=out, stderr=err, env=clean_env(env), start_new_session=True
        )
        out.close()
        err.close()
        self.procs.append(p)
        return p

    def wait(self, timeout: float = 120) -> list[Result]:
        deadline = time.monotonic() + timeout
        results = []
        for r, p in enumerate(self.procs):
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill()
                pytest.fail(f"rank {r} did not finish within {timeout} s (hang?)\n{self.logs()}")
            results.append(Result(p.returncode, self.stdout(r), self.stderr(r), time.monotonic() - self.t0))
        return results

    def stdout(self, r: int) -> str:
        return (self.logdir / f"stdout_{r}").read_text()

    def stderr(self, r: int) -> str:
        return (self.logdir / f"stderr_{r}").read_text()

    def logs(self) -> str:
        return "\n".join(f"--- rank {r}\n{self.stdout(r)}{self.stderr(r)}" for r in range(len(self.procs)))

    def kill(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGKILL)  # the process and anything it started (ip netns exec)
                except ProcessLookupError:
                    pass
                p.wait()


@pytest.fixture
def ranks(tmp_path):
    """Ranks(logdir) factory; whatever is still running at the end of the test is killed."""
    made: list[Ranks] = []

    def make(name: str = "logs") -> Ranks:
        rk = Ranks(tmp_path / name)
        made.append(rk)
        return rk

    yield make
    for rk in made:
        rk.kill()


def wait_for(pred, timeout: float, what: str) -> None:
    """Poll a condition of the test harness (files appearing); the programs under test never do this."""
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.05)
