"""Rendering: typed template contexts -> Jinja -> one source file per target.

One Jinja Environment (StrictUndefined) finds the templates in a checkout (top-level
templates/) or in an installed wheel (the package llmgen.templates), after any extra
folders a build names (Options.template_dirs: kernels of ops defined outside llmgen).
A target is a module (codegen/c.py, codegen/cuda.py) with its program template, the path of
a kernel family's template, and its launch choices (`configure`).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from llmgen import __version__
from llmgen.codegen import c as c_target
from llmgen.codegen import cuda as cuda_target
from llmgen.codegen.lower import Program, lower
from llmgen.codegen.text import tidy
from llmgen.compiler import compile_graph


def templates_dir() -> Path:
    """templates/ of the checkout this package lives in, else the wheel's llmgen/templates."""
    pkg = Path(__file__).resolve().parent.parent
    checkout = pkg.parent / "templates"
    if (pkg.parent / "pyproject.toml").is_file() and (checkout / "common" / "runtime.h").is_file():
        return checkout
    try:
        from importlib.resources import files

        installed = Path(str(files("llmgen.templates")))
    except ModuleNotFoundError:
        installed = pkg / "templates"
    if (installed / "common" / "runtime.h").is_file():
        return installed
    raise FileNotFoundError(f"llmgen templates not found (looked in {checkout} and {installed})")


@lru_cache(maxsize=8)
def environment(extra_dirs: tuple[str, ...] = ()) -> jinja2.Environment:
    """The Jinja environment; `extra_dirs` are searched first (templates of ops added from outside)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader([*map(str, extra_dirs), str(templates_dir())]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.globals["paste"] = paste
    return env


def paste(name: str, description: bool = True) -> str:
    """A file of templates/ pasted into the program as it is (C or CUDA source, no Jinja: the runtime,
    the CUDA device helpers), without its last newline; description=False: without the block comment that
    opens the file (what it is, for its own readers: the program's section banner says it there)."""
    text = (templates_dir() / name).read_text().rstrip("\n")
    return text if description or not text.startswith("/*") else text.split("*/\n", 1)[1]


TARGETS = {"c": c_target, "cuda": cuda_target}


@dataclass(frozen=True)
class Options:
    """What a build is specialised for beyond the spec itself."""

    target: str = "c"  # c | cuda
    fuse: bool = True  # run the fusion passes
    recompute: int = 0  # llm.c's -r: 0 keep activations, 1 recompute GELU, 2 GELU + layernorm
    template_dirs: tuple[str, ...] = ()  # extra template folders, searched before llmgen's own
    distributed: bool = False  # data parallel over processes (templates/common/comm.h; NCCL on the CUDA target)
    fp8_recipe: str = "current"  # --dtype fp8's scales: current amax, or delayed (an amax history, kernels/fp8.cuh)


def program_for(spec, options: Options = Options()) -> Program:
    target = TARGETS[options.target]
    if spec.dtype == "fp8" and options.target != "cuda":
        raise ValueError(f"--dtype fp8 needs --target cuda (cuBLASLt's FP8 GEMM), got --target {options.target}")
    # bf16 (spec.dtype) is the CUDA target's mixed precision (fp8: bf16 with FP8 block linears, plan.fp8); the C
    # twin computes in fp32
    dtype = spec.dtype if options.target == "cuda" else "fp32"
    g, plan = compile_graph(spec, B=1, T=1, fuse=options.fuse, recompute=options.recompute, dtype=dtype)
    prog = lower(g, plan, target.NAME, __version__, recompute=options.recompute, scalar_ref=target.SCALAR_REF)
    if prog.fp8 is not None:
        prog.fp8.delayed = options.fp8_recipe == "delayed"
    if options.distributed:
        from llmgen.codegen.lower import c_string
        from llmgen.flags import c_rows, usage_lines

        prog.distributed = True  # the flags' defaults and usage of a multi-process trainer (-z 1 with N > 1)
        prog.flag_rows = c_rows(spec.max_seq_len, options.recompute, distributed=True)
        prog.usage = [c_string(line + "\n") for line in usage_lines(distributed=True)]
    prog = target.configure(prog)
    env = environment(tuple(map(str, options.template_dirs)))
    check_kernels(prog, env)
    if hasattr(target, "bind_calls"):  # the C target: the schedule calls the kernels' bodies (see there)
        target.bind_calls(prog, env)
    return prog


def check_kernels(prog: Program, env: jinja2.Environment) -> None:
    """Every kernel's family template defines a macro named after its op, else a one-line error."""
    missing = []
    for k in prog.kernels:
        try:
            module = env.get_template(k.template).module
        except jinja2.TemplateNotFound:
            module = None
        if not hasattr(module, k.op):
            missing.append(f"{k.op} ({k.template})")
    if missing:
        raise ValueError(
            f"the {prog.target} target has no kernel for {', '.join(sorted(set(missing)))} "
            f"(arch {prog.arch}); try another --target"
        )


def render(spec, options: Options = Options()) -> str:
    prog = program_for(spec, options)  # its kernels checked
    env = environment(tuple(map(str, options.template_dirs)))
    return tidy(env.get_template(TARGETS[options.target].PROGRAM).render(p=prog))
