"""Render, write and build a trainer: ``build_trainer`` is the one function every caller uses
(`llmgen build`, `llmgen train`'s cached build, InProcessTrainer, CudaTrainer). Both steps are
cached: the source is written only when it changed, the compiler runs only when the source or the
command changed (a .buildhash stamp beside the output)."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
from pathlib import Path
from collections.abc import Callable

from llmgen.files import write_atomic, write_if_changed


class BuildError(RuntimeError):
    pass


def build_trainer(
    spec,
    options,
    out_dir,
    *,
    library: bool = False,
    emulate: bool = False,
    on_compile: Callable[[], None] | None = None,
) -> Path:
    """Render the program of (spec, options), write out_dir/train.c (or train.cu) when it changed,
    compile it when needed into out_dir/train, or with library=True write library.c (library.cu) too,
    the in-process API that includes the program (render_library), and compile that into
    out_dir/libtrain.so; for GPT-2's vocabulary write the token table tokenizer.bin and the Hugging
    Face tokenizer files beside it (the trainer prints samples with the first and copies the others
    into its checkpoints). emulate: the CUDA source through g++ and emulate.h. on_compile() is called
    just before a compiler actually runs. Returns the path of the binary or library."""
    from llmgen.codegen import c as c_target
    from llmgen.codegen import render

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ext = "c" if options.target == "c" else "cu"
    src = out_dir / f"train.{ext}"
    # the C twin's GEMM blocks for the machine that compiles it (codegen/c.py: $LLMGEN_CPU_PROFILE still decides
    # first; `llmgen emit` keeps the fixed profile, so emitted sources do not depend on the machine)
    with c_target.default_profile("host"):
        write_if_changed(src, render(spec, options))
    out = out_dir / ("libtrain.so" if library else "train")
    lib_flags, deps = [], ()
    if library:
        deps = (src,)
        src = out_dir / f"library.{ext}"
        with c_target.default_profile("host"):
            write_if_changed(src, render_library(spec, options))
        lib_flags = (
            ["-shared", "-Xcompiler", "-fPIC"] if options.target == "cuda" and not emulate else ["-shared", "-fPIC"]
        )
    if options.target == "c":
        if emulate:
            raise BuildError("--emulate applies to the cuda target only")
        binary = build_c(src, out, lib_flags, on_compile=on_compile, deps=deps, mpi=options.distributed)
    else:
        binary = build_cuda(
            src, out, emulate=emulate, extra_flags=lib_flags, on_compile=on_compile, deps=deps, nccl=options.distributed
        )
    write_token_files(spec, out_dir)
    return binary


def render_library(spec, options) -> str:
    """library.c (library.cu): the in-process API of the program of (spec, options), which it includes
    (train.c beside it, built without main): buffer lookup by graph name and the extern llmgen_* functions."""
    from llmgen.codegen import environment, program_for
    from llmgen.codegen.text import tidy

    env = environment(tuple(map(str, options.template_dirs)))
    return tidy(env.get_template("common/library.j2").render(p=program_for(spec, options)))


def cached_build_dir(spec, options, cache_root: Path) -> Path:
    """The cache folder of one (spec, options, llmgen version): its train binary and libtrain.so."""
    import json

    from llmgen import __version__
    from llmgen.passes.precision import FP8_MIN_WEIGHTS, fp8_min_weights

    parts = [spec.digest(), options.target, options.fuse, options.recompute, __version__]
    parts += ["distributed"] if options.distributed else []
    parts += [f"fp8-{options.fp8_recipe}"] if options.fp8_recipe != "current" else []  # today's keys stay as they were
    if spec.dtype == "fp8" and fp8_min_weights() != FP8_MIN_WEIGHTS:  # $LLMGEN_FP8_MIN_WEIGHTS changes the program
        parts += [f"fp8-min-{fp8_min_weights()}"]
    key = json.dumps(parts)
    return Path(cache_root) / "builds" / f"{spec.arch}-{options.target}-{hashlib.sha256(key.encode()).hexdigest()[:12]}"


def cached_build(spec, options, cache_root: Path, library: bool = False) -> Path:
    """build_trainer into the cache folder of (spec, options): once per spec, later calls reuse the
    binary (or library). A build that compiles says so on stderr first, since a new spec takes a while:
    `llmgen: building trainer for spec <digest> (first run; ...)`."""
    import sys

    out = cached_build_dir(spec, options, cache_root)
    what = "sampling library" if library else "trainer"

    def announce() -> None:
        print(
            f"llmgen: building {what} for spec {spec.digest()} (first run; cached in {out})",
            file=sys.stderr,
            flush=True,
        )

    return build_trainer(spec, options, out, library=library, on_compile=announce)


def write_token_files(spec, out_dir: Path) -> None:
    """GPT-2's vocabulary: tokenizer.bin (llm.c's token table) and the HF tokenizer files, if changed."""
    if spec.vocab_size != 50257:
        return
    from llmgen.tokenizer import get_gpt2_encoding, gpt2_hf_tokenizer_files, token_table_bytes, write_hf_tokenizer_files

    write_if_changed(Path(out_dir) / "tokenizer.bin", token_table_bytes(get_gpt2_encoding()))
    write_hf_tokenizer_files(out_dir, gpt2_hf_tokenizer_files(spec.max_seq_len))


def c_compiler() -> str:
    cc = os.environ.get("CC") or shutil.which("gcc") or shutil.which("cc")
    if not cc:
        raise BuildError("no C compiler found (install gcc)")
    return cc


# -fno-math-errno: sqrtf/expf need not set errno (the generated code never reads it), so gcc inlines
# and vectorises them (AdamW's sqrtf stayed a scalar libm call without it: 5x slower); IEEE results
# are unchanged (this is not -ffast-math)
C_FLAGS = ["-O3", "-march=native", "-fopenmp", "-fno-math-errno", "-std=gnu11", "-Wall", "-Wno-unused-function"]


def mpi_c_compiler() -> str | None:
    """mpicc (or $MPICC) when MPI is installed: a distributed trainer built with it also runs under mpirun."""
    return os.environ.get("MPICC") or shutil.which("mpicc")


def build_c(
    src: Path, out: Path, extra_flags: list[str] | None = None, on_compile=None, deps: tuple = (), mpi: bool = False
) -> Path:
    """gcc -O3 -march=native -fopenmp; skipped when the binary was built from this exact source (and deps,
    the files it includes). mpi: a distributed trainer, through mpicc -DLLMGEN_MPI where MPI is installed
    (mpirun, srun with PMIx, and the TCP launches), else gcc (torchrun-style variables and the file
    rendezvous only: templates/common/comm.h)."""
    mpicc = mpi_c_compiler() if mpi else None
    cc, defines = (mpicc, ["-DLLMGEN_MPI"]) if mpicc else (c_compiler(), [])
    cmd = [cc, *C_FLAGS, *defines, *(extra_flags or []), str(src), "-lm", "-o", str(out)]
    return _build(cmd, src, out, deps=deps, on_compile=on_compile)


def _build(cmd: list[str], src: Path, out: Path, deps: tuple = (), on_compile=None) -> Path:
    stamp = out.with_name(out.name + ".buildhash")
    blob = Path(src).read_bytes() + " ".join(cmd).encode() + b"".join(Path(d).read_bytes() for d in deps)
    h = hashlib.sha256(blob).hexdigest()
    if out.is_file() and stamp.is_file() and stamp.read_text() == h:
        return out
    if on_compile is not None:
        on_compile()
    # the compiler writes beside the output and the result is renamed over it: a build that is
    # interrupted or fails never leaves a half-written binary under the cached name
    tmp_out = out.with_name(f".{out.name}.{os.getpid()}.tmp")
    cmd = [str(tmp_out) if c == str(out) else c for c in cmd]
    try:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            raise BuildError(f"build failed: {' '.join(cmd)}\n{r.stderr[-8000:]}")
        os.replace(tmp_out, out)
    finally:
        if tmp_out.exists():
            tmp_out.unlink()
    write_atomic(stamp, h)
    return out


# --------------------------------------------------------------------------------------------
# CUDA: nvcc + cuBLASLt on a GPU machine, or the same .cu through g++ and emulate/emulate.h on any CPU

CUDA_ARCH_DEFAULT = "sm_90a"  # Hopper with its arch-specific instructions (wgmma, setmaxnreg): H100 / H200


def hopper_arch(arch: str) -> str:
    """sm_90 -> sm_90a: a Hopper build targets the arch-specific variant (wgmma, setmaxnreg, TMA multicast),
    which runs only on sm_90 itself, the GPU it is built for; other archs unchanged."""
    return "sm_90a" if arch == "sm_90" else arch


def cuda_home() -> Path | None:
    """The CUDA install: $CUDA_HOME / $CUDA_PATH, the folder above nvcc's bin/, or /usr/local/cuda."""
    cands = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        cands.append(str(Path(nvcc).resolve().parent.parent))
    cands.append("/usr/local/cuda")
    for c in cands:
        if c and (Path(c) / "include" / "cuda_runtime.h").is_file():
            return Path(c)
    return None


def cuda_include_dirs() -> list[Path]:
    """Folders holding cuda_runtime.h (and targets/<arch>/include where the toolkit keeps it)."""
    home = cuda_home()
    if home is None:
        raise BuildError(
            "the CUDA headers (cuda_runtime.h, cuda_bf16.h) were not found: install the CUDA toolkit or set CUDA_HOME"
        )
    return [home / "include"]


def cublas_dirs() -> tuple[Path, Path] | None:
    """(include, lib) of cuBLASLt: the CUDA install, else the nvidia-cublas wheel in site-packages."""
    home = cuda_home()
    cands = []
    if home is not None:
        cands += [
            (home / "include", home / "lib64"),
            (home / "include", home / "lib"),
            (home / "targets" / "x86_64-linux" / "include", home / "targets" / "x86_64-linux" / "lib"),
        ]
    return _first_with(cands + _wheel_dirs("cu13", "cublas", "cu12"), "cublasLt.h", "libcublasLt.so*")


def _wheel_dirs(*subs: str) -> list[tuple[Path, Path]]:
    """(include, lib) of each of NVIDIA's wheels named subs in site-packages (the `nvidia` namespace package)."""
    try:
        import nvidia
    except ImportError:
        return []
    return [(root / sub / "include", root / sub / "lib") for root in map(Path, nvidia.__path__) for sub in subs]


def _first_with(cands: list[tuple[Path, Path]], header: str, lib_glob: str) -> tuple[Path, Path] | None:
    """The first (include, lib) holding the header and a library matching lib_glob, or None."""
    return next(((inc, lib) for inc, lib in cands if (inc / header).is_file() and any(lib.glob(lib_glob))), None)


def _cublas_lib_flag(lib: Path) -> str:
    """-lcublasLt where the unversioned link exists (toolkit), else the wheel's libcublasLt.so.N."""
    return _lib_flag(lib, "cublasLt")


def _lib_flag(lib: Path, name: str) -> str:
    """-l<name> where the unversioned link exists, else -l:lib<name>.so.N (a wheel ships only that)."""
    if (lib / f"lib{name}.so").exists():
        return f"-l{name}"
    versioned = sorted(lib.glob(f"lib{name}.so.*"), key=lambda p: len(p.name))
    return f"-l:{versioned[0].name}"


def nccl_dirs() -> tuple[Path, Path] | None:
    """(include, lib) of NCCL (nccl.h + libnccl.so): $NCCL_HOME, the CUDA install, the distribution's libnccl-dev,
    else the nvidia-nccl-cu13 / -cu12 wheel in site-packages."""
    cands = []
    if os.environ.get("NCCL_HOME"):
        home = Path(os.environ["NCCL_HOME"])
        cands += [(home / "include", home / "lib"), (home / "include", home / "lib64")]
    home = cuda_home()
    if home is not None:
        cands += [(home / "include", home / "lib64"), (home / "include", home / "lib")]
    cands.append((Path("/usr/include"), Path("/usr/lib/x86_64-linux-gnu")))
    return _first_with(cands + _wheel_dirs("nccl", "cu13", "cu12"), "nccl.h", "libnccl.so*")


def mpi_flags() -> tuple[list[str], list[str]]:
    """(compile, link) flags of the MPI install (mpicc --showme), or two empty lists without MPI: a distributed CUDA
    trainer is built with them and -DLLMGEN_MPI where MPI exists, like the C twin through mpicc."""
    mpicc = mpi_c_compiler()
    if not mpicc:
        return [], []
    try:
        flags = [
            subprocess.run([mpicc, f"--showme:{w}"], capture_output=True, text=True, check=True).stdout.split()
            for w in ("compile", "link")
        ]
    except (OSError, subprocess.CalledProcessError) as e:
        raise BuildError(f"{mpicc} --showme failed ({e}): set MPICC to Open MPI's mpicc, or take it off PATH") from e
    return ["-DLLMGEN_MPI", *flags[0]], flags[1]


def _for_nvcc(flags: list[str]) -> list[str]:
    """gcc-style flags (mpicc --showme's) as nvcc takes them: -I, -L, -l, -D as they are, the rest through -Xcompiler
    or, for -Wl,..., -Xlinker."""
    out = []
    for f in flags:
        if f.startswith(("-I", "-L", "-l", "-D")):
            out.append(f)
        elif f.startswith("-Wl,"):
            out.append("-Xlinker=" + f.removeprefix("-Wl,"))
        else:
            out.append("-Xcompiler=" + f)
    return out


def visible_gpu_arch() -> str | None:
    """sm_XY of the first visible GPU (nvidia-smi), or None without one."""
    smi = shutil.which("nvidia-smi")
    if not smi:
        return None
    try:
        r = subprocess.run(
            [smi, "--query-gpu=compute_cap", "--format=csv,noheader"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    first = r.stdout.strip().splitlines()[0].strip() if r.returncode == 0 and r.stdout.strip() else ""
    return hopper_arch("sm_" + first.replace(".", "")) if first.replace(".", "").isdigit() else None


def emulate_dir() -> Path:
    """templates/cuda/emulate: emulate.h (the one header a program includes) and its parts emu_*.h."""
    from llmgen.codegen import templates_dir

    return templates_dir() / "cuda" / "emulate"


def emulate_header() -> Path:
    return emulate_dir() / "emulate.h"


def copy_emulation_headers(dest: Path) -> list[Path]:
    """Copy emulate.h and its parts into `dest` (write-if-changed); the copies, for build caching."""
    dest.mkdir(parents=True, exist_ok=True)
    copies = []
    for h in sorted(emulate_dir().glob("*.h")):
        write_if_changed(dest / h.name, h.read_bytes())
        copies.append(dest / h.name)
    return copies


def build_cuda(
    src: Path,
    out: Path,
    emulate: bool = False,
    archs: list[str] | None = None,
    extra_flags: list[str] | None = None,
    on_compile=None,
    deps: tuple = (),
    nccl: bool = False,
) -> Path:
    """Build train.cu. GPU: nvcc -O3 for `archs` (default: the visible GPU's, else sm_90a; an sm_90 given or
    seen is built as sm_90a), linked to cuBLASLt from the CUDA install or the nvidia-cublas wheel.
    emulate=True: the same source through g++ with the emulation headers (copied into emulate/ next to it
    and named by -I), as emulate.h's contract says; no GPU, no cuBLAS. nccl: a distributed trainer
    (`--distributed`), linked to NCCL (nccl_dirs) or, emulated, with emulate_nccl.h; both with MPI's flags
    where MPI is installed."""
    src, out = Path(src), Path(out)
    mpi_compile, mpi_link = mpi_flags() if nccl else ([], [])
    if emulate:
        headers = copy_emulation_headers(src.parent / "emulate")
        if nccl:
            from llmgen.codegen import templates_dir

            nccl_h = src.parent / "emulate" / "emulate_nccl.h"
            write_if_changed(nccl_h, (templates_dir() / "cuda" / "emulate_nccl.h").read_bytes())
            headers.append(nccl_h)
        stale = src.parent / "emulate.h"  # the single-file header older versions copied here
        if stale.is_file() and stale.read_bytes().startswith(b"/* emulate.h -- run llmgen's"):
            stale.unlink()  # it would shadow emulate/emulate.h (same folder as train.cu)
        cxx = os.environ.get("CXX") or shutil.which("g++")
        if not cxx:
            raise BuildError("--emulate needs g++")
        inc = [f"-I{src.parent / 'emulate'}", *(f"-I{d}" for d in cuda_include_dirs())]
        cmd = [
            cxx,
            "-std=c++17",
            "-O2",
            "-fno-strict-aliasing",
            "-fopenmp",
            "-DLLMGEN_EMULATE",
            *inc,
            *mpi_compile,
            *(extra_flags or []),
            "-x",
            "c++",
            str(src),
            "-x",
            "none",
            "-o",
            str(out),
            *mpi_link,
            "-lm",
        ]
        return _build(cmd, src, out, deps=(*deps, *headers), on_compile=on_compile)
    nvcc = shutil.which("nvcc") or (str(cuda_home() / "bin" / "nvcc") if cuda_home() else None)
    if not nvcc or not Path(nvcc).exists():
        raise BuildError("nvcc not found: install the CUDA toolkit, or build with --emulate to run on the CPU")
    blas = cublas_dirs()
    if blas is None:
        raise BuildError(
            "cuBLASLt (cublasLt.h + libcublasLt.so) not found in the CUDA install; "
            "`pip install nvidia-cublas` provides both"
        )
    inc, lib = blas
    link = [f"-L{lib}", f"-Xlinker=-rpath,{lib}", _cublas_lib_flag(lib)]
    if nccl:
        found = nccl_dirs()
        if found is None:
            raise BuildError(
                "NCCL (nccl.h + libnccl.so) not found (NCCL_HOME, the CUDA install, /usr); "
                "`pip install nvidia-nccl-cu13` provides both, or build with --emulate to run on the CPU"
            )
        nccl_inc, nccl_lib = found
        mpi_compile = [f"-I{nccl_inc}", *_for_nvcc(mpi_compile)]
        link += [f"-L{nccl_lib}", f"-Xlinker=-rpath,{nccl_lib}", _lib_flag(nccl_lib, "nccl"), *_for_nvcc(mpi_link)]
    archs = [hopper_arch(a) for a in archs or [visible_gpu_arch() or CUDA_ARCH_DEFAULT]]
    gencode = []
    for a in archs:
        n = a.removeprefix("sm_")
        gencode += ["-gencode", f"arch=compute_{n},code=sm_{n}"]
    cmd = [
        nvcc,
        "-O3",
        "-std=c++17",
        # stream 0 (every kernel's) is the per-thread default stream, which a CUDA Graph can capture (train.cu's
        # training micro-step); the legacy default stream cannot be captured
        "--default-stream",
        "per-thread",
        *gencode,
        f"-I{inc}",
        *mpi_compile,
        *(extra_flags or []),
        str(src),
        "-o",
        str(out),
        *link,
    ]
    return _build(cmd, src, out, deps=deps, on_compile=on_compile)
