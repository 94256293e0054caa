"""`llmgen build SPEC -o DIR`: emit and compile a trainer (train.c or train.cu, and train)."""

from __future__ import annotations

from pathlib import Path

from llmgen.cli import CliError, add_distributed_arg, build_options, add_spec_args, check_fp8_target


def register(sub) -> None:
    p = sub.add_parser("build", help="emit and compile a trainer")
    add_spec_args(p)
    p.add_argument("--target", choices=("c", "cuda"), default="c")
    p.add_argument(
        "--emulate", action="store_true", help="cuda: build the .cu for the CPU through the emulation header"
    )
    p.add_argument(
        "--recompute",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="activation recompute in the backward (llm.c's -r): 0 none, 1 GELU, 2 GELU + layernorm [0]",
    )
    add_distributed_arg(p)
    p.add_argument("-o", required=True, metavar="DIR", help="output folder (train.c or train.cu, train)")
    p.set_defaults(func=run)


def run(args) -> int:
    from llmgen.runtime.build import build_trainer
    from llmgen.spec import load_spec

    spec = load_spec(args.spec, args.dtype)
    check_fp8_target(spec, args.target, args.distributed)
    if args.emulate and args.target != "cuda":
        raise CliError("--emulate applies to --target cuda only")
    options = build_options(args)
    out = Path(args.o)
    if out.exists() and not out.is_dir():
        raise CliError(f"-o {out}: exists and is not a folder")
    binary = build_trainer(
        spec,
        options,
        out,
        emulate=args.emulate,
        on_compile=lambda: print(f"building trainer for spec {spec.digest()} in {out}", flush=True),
    )
    src = out / ("train.c" if args.target == "c" else "train.cu")
    print(f"wrote {src} ({len(src.read_text().splitlines())} lines), built {binary}")
    if args.distributed:
        from llmgen.runtime.build import mpi_c_compiler

        compiler = "gcc" if args.target == "c" else "g++" if args.emulate else "nvcc"
        how = (
            f"built with {'mpicc' if args.target == 'c' else compiler + ' and MPI'} -DLLMGEN_MPI: mpirun -np N, "
            "srun --mpi=pmix, or torchrun-style variables"
            if mpi_c_compiler()
            else f"no mpicc found, built with {compiler}: torchrun-style variables or LLMGEN_RENDEZVOUS_DIR "
            "(not mpirun)"
        )
        if args.target == "cuda":
            how += "; the collectives are NCCL's" + (" (emulate_nccl.h, on the CPU)" if args.emulate else "")
        print(f"data parallel: {how}; -b is per process (README: Many processes)")
    return 0
