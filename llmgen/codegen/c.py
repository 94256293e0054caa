"""C target (the CPU twin): launch decisions (the GEMM engine's cache blocks and the attention schedule, per
kernel instance) and the kernel code a program pastes.

lower.py makes the target-independent Program; for the C target this module then fills each Kernel's `cfg`
(constants the templates substitute) and names the template of its family. The kernels are code: each family's
bodies are `static inline` C functions taking their sizes as parameters (templates/c/<family>.h, the GEMM engine
and vector math in templates/c/gemm.h), and a family's template (templates/c/<family>.c.j2) only writes the
statement the schedule runs for an instance: its body called with literal sizes (`bind_calls`), so gcc folds
them as if written out. `used_code` pastes the header pieces those statements reach, and nothing else.
"""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

from llmgen.codegen.lower import Kernel, Launch, Program

NAME = "c"
PROGRAM = "c/program.c.j2"  # the program skeleton
FAMILY = "c/{family}.c.j2"  # a kernel family: one macro per op
SCALAR_REF = "&{}"  # the graph's scalars are host variables: kernels get their address


def gemm_blocks(op: str, dims: dict) -> dict[str, int]:
    """Cache blocks of the C target's GEMM engine (templates/c/gemm.h) for one linear kernel.

    kc: the reduction slice. A kc x NR panel of B (NR = 32 floats with AVX-512) should stay in L1
        and an MC x kc block of A in L2, so kc <= 384; the reduction is cut into equal slices
        (768 -> 2 x 384, 3072 -> 8 x 384), rounded up to 16 (the packing's transpose width).
        linear_dw reduces over the runtime B*T rows: 384 there.
    mc: rows of A per block, MC x kc x 4 bytes ~ 512 KiB (half of a 1-2 MiB L2).
    nc: columns of B per block, kc x NC x 4 bytes ~ 1.5 MiB: the packed panels a thread reuses
        across its MC row blocks (only when it has more than MC rows) sit in L2/L3.
    Measured on one Zen 5 core at the GPT-2 124M shapes (B*T = 256): kc from 128 to 384 all within
    +-4% (85-90% of the core's fp32 peak on the layer GEMMs); 384 makes the fewest passes over C."""
    reduction = {"linear": dims["K"], "linear_dx": dims["N"], "linear_dw": dims["M"]}[op]
    if isinstance(reduction, int):
        per_slice = -(-reduction // -(-reduction // 384))  # ceil(R / ceil(R / 384))
        kc = -(-per_slice // 16) * 16
    else:
        kc = 384
    return {"kc": kc, "mc": max(16, (512 * 1024 // 4) // kc), "nc": max(32, (1536 * 1024 // 4) // kc)}


def attention_config(k: Kernel) -> dict[str, int]:
    """The attention schedule (templates/c/attention.c.j2). With one K/V head per query head
    (R = NH/KV = 1), threads split the (b, h) heads and every product is a per-head GEMM of at most
    T x T x HD (the GEMM engine's blocks kc, mc, nc), one block of rb query rows at a time so that
    the masked upper triangle is mostly skipped (~half the work at T = 1024). Grouped heads (R > 1,
    GROUPED = 1) take the row schedule instead: a thread owns a (b, K/V head) and walks the group's
    query heads row by row, so the dk, dv it sums over them need no second pass."""
    return {"kc": 384, "mc": 256, "nc": 1024, "rb": 64, "GROUPED": int(k.dims["NH"] != k.dims["KV"])}


# family -> its launch choices, for the families that have any
LAUNCH = {
    "linear": lambda k: gemm_blocks(k.op, k.dims),
    "attention": attention_config,
}


def configure(prog: Program) -> Program:
    for k in prog.kernels:
        k.template = FAMILY.format(family=k.family)
        if k.family in LAUNCH:
            k.cfg = LAUNCH[k.family](k)
    prog.code = used_code
    return prog


def bind_calls(prog: Program, env) -> None:
    """What the schedule writes for each kernel. A family's macro renders either the statement itself, its body
    called with literal sizes and `$0, $1, ...` for the launch's arguments (`PARALLEL layernorm_forward($0, ...,
    BT, 768, 1e-05f)`, as llm.c calls its kernels), or a whole function named after the kernel (a kernel with
    code of its own), which the kernels section then holds and the schedule calls. prog.c_kernels: those
    functions, and every statement, for used_code to find the header code they reach."""
    calls, functions = {}, []
    for k in prog.kernels:
        text = str(getattr(env.get_template(k.template).module, k.op)(k)).strip()
        if re.search(rf"\b{k.name}\s*\(", text):
            functions.append(text)
        else:
            calls[k.name] = text
    prog.c_kernels = {"functions": "\n\n".join(functions), "calls": "\n".join(calls.values())}
    for phase in (prog.forward, prog.backward, prog.update, *prog.flat.values()):
        for b in phase:
            for launch in [b] if isinstance(b, Launch) else [*b.body, *(e for e in b.edge if e is not None)]:
                launch.call = calls.get(launch.fn, "")


# --------------------------------------------------------------------------------------------
# pasting the kernel headers: a header is its description (a block comment, not pasted), then pieces
# separated by blank lines outside braces and #if blocks; a piece that defines nothing (a comment) goes with
# the next. A piece is pasted when code already pasted names what it defines.

HELPERS = "gemm.h"  # the shared helpers (vector math, the GEMM engine): the "kernel helpers" section

_COMMENT = re.compile(r"/\*.*?\*/|//[^\n]*", re.S)
_IDENT = re.compile(r"[A-Za-z_]\w*")


def _defines(piece: str) -> set[str]:
    """The names a piece defines at file level: functions, variables, typedefs, enum members, macros."""
    names, depth = set(), 0
    for line in _COMMENT.sub("", piece).splitlines():
        if m := re.match(r"\s*#\s*define\s+(\w+)", line):
            names.add(m.group(1))
        elif depth == 1 and (m := re.match(r"\}\s*(\w+)\s*;", line)):  # } Name; of a typedef
            names.add(m.group(1))
        elif depth > 0:
            pass
        elif m := re.match(r"\s*enum\s*\{([^}]*)\}", line):
            names.update(x.split("=")[0].strip() for x in m.group(1).split(",") if x.strip())
        elif m := re.match(r"typedef\s[^{]*?(\w+)\s*(?:__attribute__|;)|typedef\s.*\}\s*(\w+)\s*;", line):
            names.add(m.group(1) or m.group(2))
        elif line.startswith(("static", "ALWAYS_INLINE")):
            head = line.split("=")[0]
            if "(" not in head:  # variables
                names.update(re.findall(r"(\w+)\s*(?=[,;\[])", head))
            else:  # a function: its name
                names.add(re.search(r"(\w+)\s*\((?!\()", head.replace("__attribute__((", "__a((")).group(1))
        if not line.lstrip().startswith("#"):
            depth += line.count("{") - line.count("}")
    return names


@cache
def _pieces(path: Path) -> list[tuple[str, set[str], set[str]]]:
    """A header's pieces in order: (text, the names it defines, the identifiers its code uses)."""
    text = path.read_text()
    body = text.split("*/\n", 1)[1].strip("\n")  # without the header's description
    pieces, cur, depth, cond = [], [], 0, 0
    for line in body.splitlines():
        if not line.strip() and depth == 0 and cond == 0 and cur:
            pieces.append("\n".join(cur))
            cur = []
            continue
        cur.append(line)
        code = _COMMENT.sub("", line).strip()
        cond += code.startswith("#if") - code.startswith("#endif")
        if not code.startswith("#"):
            depth += code.count("{") - code.count("}")
    if cur:
        pieces.append("\n".join(cur))
    out, pending = [], ""
    for p in pieces:
        text = pending + p
        names = _defines(p)
        if not names:
            pending = text + "\n\n"
            continue
        out.append((text, names, set(_IDENT.findall(_COMMENT.sub("", text)))))
        pending = ""
    return out


def used_code(kernels: str, folder: Path | None = None) -> dict[str, str]:
    """The header pieces that the kernels' source (the rendered per-instance functions) reaches, in header order:
    {"helpers": the pieces of gemm.h, "bodies": those of the family headers}."""
    if folder is None:
        from llmgen.codegen import templates_dir

        folder = templates_dir() / "c"
    headers = [folder / HELPERS] + sorted(p for p in folder.glob("*.h") if p.name != HELPERS)
    pieces = [(h.name, *piece) for h in headers for piece in _pieces(h)]
    need, taken = set(_IDENT.findall(_COMMENT.sub("", kernels))), set()
    while True:
        new = {i for i, (_, _, names, _) in enumerate(pieces) if i not in taken and names & need}
        if not new:
            break
        taken |= new
        for i in new:
            need |= pieces[i][3]

    def first_use(header: str) -> int:  # a family's bodies come in the order the kernels first call them
        hits = [
            m.start()
            for i in taken
            if pieces[i][0] == header
            for name in pieces[i][2]
            for m in [re.search(rf"\b{name}\b", kernels)]
            if m
        ]
        return min(hits, default=len(kernels))

    order = {h.name: (h.name != HELPERS, first_use(h.name)) for h in headers}
    taken_in_order = sorted(taken, key=lambda i: (order[pieces[i][0]], i))
    pick = lambda helpers: "\n\n".join(pieces[i][1] for i in taken_in_order if (pieces[i][0] == HELPERS) == helpers)  # noqa: E731
    return {"helpers": pick(True), "bodies": pick(False)}
