"""Rendering: typed template contexts -> Jinja -> one source file per target.

One Jinja Environment (StrictUndefined) finds the templates in a checkout (top-level
templates/) or in an installed wheel (the package llmgen.templates).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from llmgen import __version__
from llmgen.codegen.lower import Program, lower
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


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    return jinja2.Environment(loader=jinja2.FileSystemLoader(str(templates_dir())),
                              undefined=jinja2.StrictUndefined, trim_blocks=True, lstrip_blocks=True,
                              keep_trailing_newline=True)


@dataclass(frozen=True)
class Options:
    """What a build is specialised for beyond the spec itself."""
    target: str = "c"          # c | cuda
    fuse: bool = True          # run the fusion passes
    recompute: int = 0         # llm.c's -r: 0 keep activations, 1 recompute GELU, 2 GELU + layernorm


def program_for(spec, options: Options = Options()) -> Program:
    # bf16 (spec.dtype) is the CUDA target's mixed precision; the C twin computes in fp32
    dtype = spec.dtype if options.target == "cuda" else "fp32"
    g, plan = compile_graph(spec, B=1, T=1, fuse=options.fuse, recompute=options.recompute, dtype=dtype)
    prog = lower(g, plan, options.target, __version__, recompute=options.recompute)
    if options.target == "cuda":
        from llmgen.codegen.cuda import configure
        configure(prog)
    return prog


def render(spec, options: Options = Options()) -> str:
    prog = program_for(spec, options)
    runtime = (templates_dir() / "common" / "runtime.h").read_text()
    tpl = {"c": "c/program.c.j2", "cuda": "cuda/program.cu.j2"}[options.target]
    return environment().get_template(tpl).render(p=prog, runtime=runtime)
