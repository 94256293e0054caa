"""`llmgen emit SPEC --target c|cuda [--library] [-o FILE]`: the program's source, without compiling it (the
command for reading what llmgen generates): on stdout, or written to FILE (atomically). --library: the
in-process API instead (library.c / library.cu, which includes the program as train.c / train.cu)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from llmgen.cli import CliError, add_distributed_arg, build_options, add_spec_args, check_fp8_target


def register(sub) -> None:
    p = sub.add_parser("emit", help="print (or write with -o) the source of a trainer, without compiling it")
    add_spec_args(p)
    p.add_argument("--target", choices=("c", "cuda"), default="c")
    p.add_argument(
        "--recompute",
        type=int,
        choices=(0, 1, 2),
        default=0,
        help="activation recompute in the backward (llm.c's -r): 0 none, 1 GELU, 2 GELU + layernorm [0]",
    )
    p.add_argument(
        "--library",
        action="store_true",
        help="the in-process API (library.c: buffers by name, llmgen_* functions), which includes train.c",
    )
    add_distributed_arg(p)
    p.add_argument("-o", metavar="FILE", default=None, help="write the source here instead of to stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    from llmgen.codegen import render
    from llmgen.files import write_atomic
    from llmgen.runtime.build import render_library
    from llmgen.spec import load_spec

    spec = load_spec(args.spec, args.dtype)
    check_fp8_target(spec, args.target, args.distributed)
    if args.distributed and args.library:
        raise CliError("--distributed --library: the in-process API is one process; emit the trainer without --library")
    options = build_options(args)
    src = (render_library if args.library else render)(spec, options)
    if args.o is None:
        try:
            sys.stdout.write(src)
            sys.stdout.flush()
        except BrokenPipeError:  # `llmgen emit gpt2 | head`: the reader stopped, which is no error
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    out = Path(args.o)
    if out.is_dir():
        raise CliError(f"-o {out}: is a folder; name the file to write (train.c, train.cu)")
    if not out.parent.is_dir():
        raise CliError(f"-o {out}: the folder {out.parent} does not exist")
    write_atomic(out, src)
    print(f"wrote {out} ({len(src.splitlines())} lines)", file=sys.stderr)
    return 0
