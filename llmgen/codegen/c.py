"""C target (the CPU twin): launch decisions (the GEMM engine's cache blocks and the attention schedule, per
kernel instance) and the kernel code a program pastes.

lower.py makes the target-independent Program; for the C target this module then fills each Kernel's `cfg`
(constants the templates substitute) and names the template of its family. The kernels are code: each family's
bodies are `static inline` C functions taking their sizes as parameters (templates/c/<family>.h, the GEMM engine
and vector math in templates/c/gemm.h), and a family's template (templates/c/<family>.c.j2) only writes the
statement the schedule runs for an instance: its body called with literal sizes (`bind_calls`), so gcc folds
them as if written out. `used_code` pastes the header pieces those statements reach, and nothing else.

The GEMM cache blocks come from a CPU profile (per-core caches, vector width): FIXED unless $LLMGEN_CPU_PROFILE
names another ("host": the machine that renders, which is the one `llmgen build` compiles on), so `llmgen emit`
and the tests give the same source everywhere; the emitted kernel helpers open with the profile and the blocks.
"""

from __future__ import annotations

import json
import os
import re
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

from llmgen.codegen.lower import Kernel, Launch, Program
from llmgen.codegen.text import wrap_comment

NAME = "c"
PROGRAM = "c/program.c.j2"  # the program skeleton
FAMILY = "c/{family}.c.j2"  # a kernel family: one macro per op
SCALAR_REF = "&{}"  # the graph's scalars are host variables: kernels get their address


@dataclass(frozen=True)
class CpuProfile:
    """What the GEMM blocks are derived from: one core's data caches (bytes; L3: the core's share) and the
    vector width the compiler's -march=native will use (floats per register: 16 AVX-512, 8 AVX2, 4 SSE/NEON)."""

    name: str
    l1d: int
    l2: int
    l3: int
    vl: int


# The default profile (`llmgen emit`, the tests, and any build not asked for the host's): the Zen 5 core the
# engine was tuned on. It gives the blocks the C twin always had, so its numbers do not depend on the machine.
FIXED = CpuProfile("fixed profile (Zen 5)", 48 << 10, 1 << 20, 16 << 20, 16)


def _size(n: int) -> str:
    return f"{n >> 20} MiB" if n >= 1 << 20 and n % (1 << 20) == 0 else f"{n >> 10} KiB"


def _bytes(text: str) -> int:
    """'48K', '1024K', '2M', '32768 KB', '65536' -> bytes"""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)i?B?\s*", text, re.I)
    if not m:
        raise ValueError(f"not a cache size: {text!r}")
    return int(m.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[m.group(2).upper()]


def host_profile() -> CpuProfile:
    """The machine this runs on: cpu0's data caches from sysfs (L3 divided by the CPUs that share it; L1d and L2
    as they are, a core's own even when SMT siblings share them), else sysconf; the vector width from
    /proc/cpuinfo's flags (what gcc -march=native enables)."""
    caches: dict[int, int] = {}
    for d in sorted(Path("/sys/devices/system/cpu/cpu0/cache").glob("index*")):
        try:
            if (d / "type").read_text().strip() == "Instruction":
                continue
            shared = [r.partition("-") for r in (d / "shared_cpu_list").read_text().strip().split(",") if r]
            cpus = sum(int(hi or lo) - int(lo) + 1 for lo, _, hi in shared)
            level = int((d / "level").read_text())
            caches[level] = _bytes((d / "size").read_text()) // (max(1, cpus) if level >= 3 else 1)
        except (OSError, ValueError):
            continue
    for level in (1, 2, 3):
        key = f"SC_LEVEL{level}_{'D' if level == 1 else ''}CACHE_SIZE"
        if level not in caches and key in os.sysconf_names and os.sysconf(key) > 0:
            caches[level] = os.sysconf(key)
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        info = ""
    name = re.search(r"^(?:model name|Model)\s*:\s*(.+)$", info, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:(.*)$", info, re.M)
    flags = set(flags.group(1).split()) if flags else set()
    vl = 16 if "avx512f" in flags else 8 if "avx2" in flags or "avx" in flags else 4
    l1d, l2 = caches.get(1, FIXED.l1d), caches.get(2, FIXED.l2)
    return CpuProfile(name.group(1).strip() if name else "unknown CPU", l1d, l2, caches.get(3, l2), vl)


PROFILE_ENV = "LLMGEN_CPU_PROFILE"  # fixed (the default) | host | a JSON file | l1d=48K,l2=1M,l3=16M,vl=16[,name=..]
BLOCKS_ENV = "LLMGEN_GEMM_BLOCKS"  # kc=..,mc=..,nc=.. (any of them): overrides what the profile gives


_default_choice = ""  # what cpu_profile takes when neither its caller nor the environment chooses (default_profile)


@contextmanager
def default_profile(choice: str):
    """Within: cpu_profile's default is `choice` ("host" for a build: the blocks of the machine that compiles the
    trainer), still below $LLMGEN_CPU_PROFILE."""
    global _default_choice
    before, _default_choice = _default_choice, choice
    try:
        yield
    finally:
        _default_choice = before


def cpu_profile(choice: str | None = None) -> CpuProfile:
    """The profile the C target derives its blocks from: `choice`, else $LLMGEN_CPU_PROFILE, else the one
    default_profile set, else FIXED.
    "host": this machine (host_profile); a path: a JSON object with CpuProfile's fields (sizes as "48K" or bytes);
    "l1d=48K,l2=1M,l3=16M,vl=16": spelled out (fields left out come from FIXED)."""
    choice = (choice if choice is not None else os.environ.get(PROFILE_ENV) or _default_choice).strip()
    if choice in ("", "fixed"):
        return FIXED
    if choice == "host":
        return host_profile()
    if "=" not in choice:
        fields = json.loads(Path(choice).read_text())
    else:
        fields = dict(kv.split("=", 1) for kv in choice.split(","))
        fields.setdefault("name", "given profile")
    got = {f: fields.get(f, getattr(FIXED, f)) for f in ("name", "l1d", "l2", "l3", "vl")}
    sizes = {f: _bytes(str(got[f])) for f in ("l1d", "l2", "l3")}
    return CpuProfile(str(got["name"]), **sizes, vl=int(got["vl"]))


def _overrides() -> dict[str, int]:
    text = os.environ.get(BLOCKS_ENV, "")
    out = {}
    for kv in filter(None, text.replace(" ", "").split(",")):
        key, _, value = kv.partition("=")
        if key not in ("kc", "mc", "nc") or not value.isdigit() or int(value) < 1:
            raise ValueError(f"{BLOCKS_ENV}={text!r}: expected kc=N,mc=N,nc=N (any of them)")
        out[key] = int(value)
    return out


def block_limits(profile: CpuProfile) -> dict[str, int]:
    """The GEMM engine's cache blocks for a machine (the BLIS analytical model, Low et al. 2016: each packed
    operand sized for the cache level it is reused from), with NR = 3 vectors (templates/c/gemm.h's register
    tile). kc: the longest reduction slice, 1.5 L1d / (NR x 4 bytes) as a multiple of 16 in [128, 512]: the
    kc x NR micro-panel of B, reused by every MR-row tile of an A block, in L1 (a third may spill to L2, which
    feeds it fast enough: on Zen 5, 85-90% of the core's fp32 peak at 384, 256 and 512 within 4%, 128 7% slower).
    a_block: bytes of the packed mc x kc block of A, half of L2 (it streams through the micro-kernel once per
    B micro-panel). b_panel: bytes of the packed kc x nc panel of B that a thread reuses across its A blocks,
    1.5 L2, or L2 and half the core's L3 share if that is less. The fixed profile's: 384, 512 KiB, 1.5 MiB."""
    nr = 3 * profile.vl
    kc = min(512, max(128, (3 * profile.l1d // 2) // (nr * 4) // 16 * 16))
    b_panel = min(3 * profile.l2 // 2, profile.l2 + profile.l3 // 2)
    return {"kc": _overrides().get("kc", kc), "a_block": profile.l2 // 2, "b_panel": b_panel}


def gemm_blocks(op: str, dims: dict, limits: dict[str, int]) -> dict[str, int]:
    """Cache blocks of one linear kernel: the reduction is cut into equal slices of at most limits["kc"]
    (768 -> 2 x 384, 3072 -> 8 x 384), rounded up to 16 (the packing's transpose width); linear_dw reduces over
    the runtime B*T rows: limits["kc"] there. mc, nc: as many rows and columns as the byte budgets hold at that
    kc, unless $LLMGEN_GEMM_BLOCKS names them."""
    reduction = {"linear": dims["K"], "linear_dx": dims["N"], "linear_dw": dims["M"]}[op]
    kc = limits["kc"]
    if isinstance(reduction, int):
        per_slice = -(-reduction // -(-reduction // kc))  # ceil(R / ceil(R / kc))
        kc = -(-per_slice // 16) * 16
    given = _overrides()
    mc = given.get("mc", max(16, limits["a_block"] // 4 // kc))
    return {"kc": kc, "mc": mc, "nc": given.get("nc", max(32, limits["b_panel"] // 4 // kc))}


def attention_config(k: Kernel, limits: dict[str, int]) -> dict[str, int]:
    """The attention schedule (templates/c/attention.c.j2). With one K/V head per query head
    (R = NH/KV = 1), threads split the (b, h) heads and every product is a per-head GEMM of at most
    T x T x HD (the GEMM engine's blocks kc, mc, nc: the machine's, block_limits), one block of rb query rows at
    a time so that the masked upper triangle is mostly skipped (~half the work at T = 1024). Grouped heads (R > 1,
    GROUPED = 1) take the row schedule instead: a thread owns a (b, K/V head) and walks the group's
    query heads row by row, so the dk, dv it sums over them need no second pass."""
    kc = limits["kc"]
    return {
        "kc": kc,
        "mc": 256,
        "nc": max(32, limits["b_panel"] // 4 // kc),
        "rb": 64,
        "GROUPED": int(k.dims["NH"] != k.dims["KV"]),
    }


def blocks_note(profile: CpuProfile, limits: dict[str, int]) -> str:
    """The comment the kernel helpers open with: the machine the GEMM blocks are for, and the blocks."""
    kc, isa = limits["kc"], {16: "AVX-512", 8: "AVX2"}.get(profile.vl, f"{profile.vl}-float vectors")
    over = _overrides()
    mc = over.get("mc", max(16, limits["a_block"] // 4 // kc))
    nc = over.get("nc", max(32, limits["b_panel"] // 4 // kc))
    given = f", {BLOCKS_ENV}={os.environ[BLOCKS_ENV][:40]}" if over else ""
    text = (
        f"GEMM blocks for {profile.name[:60]} (L1d {_size(profile.l1d)}, L2 {_size(profile.l2)}, "
        f"L3 {_size(profile.l3)}, {isa}{given}): kc <= {kc}, mc {mc}, nc {nc}"
    )
    return "\n".join(wrap_comment(text, ""))


def configure(prog: Program, profile: CpuProfile | None = None) -> Program:
    """Each kernel's template and launch choices; the GEMM blocks from `profile` (default: cpu_profile())."""
    profile = profile or cpu_profile()
    limits = block_limits(profile)
    launch = {  # family -> its launch choices, for the families that have any
        "linear": lambda k: gemm_blocks(k.op, k.dims, limits),
        "attention": lambda k: attention_config(k, limits),
    }
    for k in prog.kernels:
        k.template = FAMILY.format(family=k.family)
        if k.family in launch:
            k.cfg = launch[k.family](k)
    prog.code = partial(used_code, note=blocks_note(profile, limits))
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


def used_code(kernels: str, folder: Path | None = None, note: str = "") -> dict[str, str]:
    """The header pieces that the kernels' source (the rendered per-instance functions) reaches, in header order:
    {"helpers": the pieces of gemm.h (after `note`, a comment, if given), "bodies": those of the family headers}."""
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
    helpers = pick(True)
    return {"helpers": f"{note}\n{helpers}" if note and helpers else helpers, "bodies": pick(False)}
