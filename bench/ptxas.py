"""ptxas resource use of the emitted CUDA, per kernel: registers, shared memory, spills, stack frame.

    python bench/ptxas.py [--out bench/ptxas.md] [--work DIR] [--check]

Renders the GPT-2 124M bf16 and the Llama-3.1-8B bf16 train.cu (llmgen.codegen.render with
Options(target="cuda")) and compiles each to an object file for Hopper with `-Xptxas -v`:

    nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -I<cuBLASLt include> -Xptxas -v -c train.cu

(the flags llmgen/runtime/build.py's build_cuda uses, with sm_90a and -c: nothing is linked, so no
GPU and no libcuda are needed; cuBLASLt's headers come from the CUDA install or the nvidia-cublas
wheel, found as build.py finds them). ptxas' report of each entry function is parsed into a table
written to --out. Static shared memory is what ptxas reports; dynamic shared memory is the launch's
(the fourth argument of LLMGEN_LAUNCH in the source, resolved where it is a constant, S::BC and the like
from the AttentionShape instance, the FA2 kernels' from the header's *_smem_bytes functions; else the
expression). Spills are what emulation cannot show
(DESIGN.md): every kernel should have none. tests/test_ptxas.py runs the same builds and asserts that.
With --check the exit status is 1 when some kernel spills.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

ARCH = "sm_90a"
# build name -> (preset, dtype)
BUILDS = {"gpt2-124m-bf16": ("gpt2", "bf16"), "llama3.1-8b-bf16": ("llama3.1-8b", "bf16")}
MAX_SMEM_PER_BLOCK = 227 * 1024  # Hopper: the most shared memory one block may opt in to


@dataclass
class KernelUsage:
    name: str  # demangled base name (e.g. attention_dkv_kernel)
    registers: int = 0
    barriers: int = 0
    smem_static: int = 0
    smem_dynamic: int | str = 0  # bytes at launch; the source expression where it is not a constant
    stack: int = 0
    spill_stores: int = 0
    spill_loads: int = 0
    entry: bool = True  # a __global__ function (else a device function ptxas kept separate)
    args: str = ""  # a template instance's arguments as written (<768, 8, true>), "" for a plain function
    symbol: str = ""  # the mangled name ptxas reports: one row per symbol, so no instance hides another

    @property
    def label(self) -> str:
        """name plus the template arguments: two instances of one template are two rows."""
        return self.name + self.args

    @property
    def spills(self) -> int:
        return self.spill_stores + self.spill_loads


# --------------------------------------------------------------------------------------------
# the toolchain


def toolchain() -> tuple[str, Path] | str:
    """(nvcc, cuBLASLt include dir), or the reason they are not usable here."""
    from llmgen.runtime.build import cublas_dirs, cuda_home

    nvcc = shutil.which("nvcc") or (str(cuda_home() / "bin" / "nvcc") if cuda_home() else None)
    if not nvcc or not Path(nvcc).exists():
        return "nvcc not found: the ptxas check needs the CUDA toolkit"
    blas = cublas_dirs()
    if blas is None:
        return "cuBLASLt headers not found (CUDA install or `pip install nvidia-cublas`)"
    return nvcc, blas[0]


def nvcc_version(nvcc: str) -> str:
    r = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    m = re.search(r"release [\d.]+, V[\d.]+", r.stdout)
    return m.group(0) if m else r.stdout.strip().splitlines()[-1]


def nvcc_command(nvcc: str, include: Path, src: Path, obj: Path) -> list[str]:
    """build_cuda's compile flags (llmgen/runtime/build.py) for sm_90a, compile only, ptxas verbose."""
    n = ARCH.removeprefix("sm_")
    return [
        nvcc,
        "-O3",
        "-std=c++17",
        "-gencode",
        f"arch=compute_{n},code=sm_{n}",
        f"-I{include}",
        "-Xptxas",
        "-v",
        "-c",
        str(src),
        "-o",
        str(obj),
    ]


# --------------------------------------------------------------------------------------------
# parsing


def _name(sym: str) -> tuple[str, int] | None:
    """The function name of an Itanium-mangled symbol, _Z<len><name>... or a name in a namespace,
    _ZN<len><ns><len><name>[I...]E... (as ns::name), and the index past it; None for others."""
    if m := re.match(r"_Z(\d+)", sym):
        return sym[m.end() : m.end() + int(m.group(1))], m.end() + int(m.group(1))
    if not sym.startswith("_ZN"):
        return None
    parts, i = [], 3
    while m := re.match(r"\d+", sym[i:]):
        n, i = int(m.group(0)), i + len(m.group(0))
        parts.append(sym[i : i + n])
        i += n
    return ("::".join(parts), i) if parts else None


def demangle(sym: str) -> str:
    """The function name of an Itanium-mangled symbol (_Z<len><name>..., ns::name for _ZN...); others as they are."""
    found = _name(sym)
    return found[0] if found else sym


def _template_args(s: str, i: int) -> tuple[str, int]:
    """The Itanium template-argument list starting at s[i] == 'I', as C++ writes it, and the index past
    its 'E'. Handles what the emitted kernels use: integer and bool literals (L<type><value>E) and class
    names, themselves possibly templates (<len><name>[I...E]); anything else raises ValueError."""
    assert s[i] == "I"
    i += 1
    out = []
    while s[i] != "E":
        if s[i] == "L":  # literal: L, a builtin type code, the value (n for minus), E
            j = s.index("E", i)
            kind, value = s[i + 1], s[i + 2 : j].replace("n", "-")
            out.append({"0": "false", "1": "true"}[value] if kind == "b" else value)
            i = j + 1
        elif m := re.match(r"\d+", s[i:]):  # a class name, maybe a template instance
            n = int(m.group(0))
            i += len(m.group(0))
            name = s[i : i + n]
            i += n
            if s[i] == "I":
                inner, i = _template_args(s, i)
                name += inner
            out.append(name)
        else:
            raise ValueError(f"template argument {s[i : i + 12]!r} of {s}")
    return "<" + ", ".join(out) + ">", i + 1


def template_args(sym: str) -> str:
    """'<768, 8, true>' for a template instance's mangled name, '' for a plain function; the mangled
    argument list itself where it holds something _template_args does not read (still unique)."""
    found = _name(sym)
    if not found:
        return ""
    i = found[1]
    if i >= len(sym) or sym[i] != "I":
        return ""
    try:
        return _template_args(sym, i)[0]
    except (ValueError, IndexError, KeyError):
        return f" [{sym}]"


def parse_ptxas(text: str) -> list[KernelUsage]:
    """ptxas -v's report: per function 'Compiling entry function', 'Function properties for' with
    its stack / spill line, and 'Used N registers, used N barriers, N bytes smem, ...'."""
    rows: dict[str, KernelUsage] = {}
    current: KernelUsage | None = None
    props: KernelUsage | None = None

    def row(sym: str, entry: bool) -> KernelUsage:
        if sym not in rows:  # keyed by the mangled name: each template instance is its own row
            rows[sym] = KernelUsage(demangle(sym), entry=entry, args=template_args(sym), symbol=sym)
        rows[sym].entry |= entry
        return rows[sym]

    for line in text.splitlines():
        if m := re.search(r"Compiling entry function '([^']+)'", line):
            current = row(m.group(1), True)
        elif m := re.search(r"Function properties for (\S+)", line):
            props = row(m.group(1), False)
        elif m := re.search(r"(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads", line):
            if props is not None:
                props.stack, props.spill_stores, props.spill_loads = map(int, m.groups())
                props = None
        elif "Used" in line and "registers" in line and current is not None:
            current.registers = int(re.search(r"Used (\d+) registers", line).group(1))
            if b := re.search(r"used (\d+) barriers", line):
                current.barriers = int(b.group(1))
            if s := re.search(r"(\d+) bytes smem", line):
                current.smem_static = int(s.group(1))
    return list(rows.values())


def _launch_args(src: str, start: int) -> list[str]:
    """The comma-separated arguments of a call whose '(' ends at `start`, nesting respected."""
    args, cur, depth, i = [], "", 0, start
    while i < len(src):
        c = src[i]
        i += 1
        if c in "([{":
            depth += 1
        elif c in ")]}":
            if depth == 0:
                args.append(cur.strip())
                return args
            depth -= 1
        elif c == "," and depth == 0:
            args.append(cur.strip())
            cur = ""
            continue
        cur += c
    return args


SIZEOF = {"float": 4, "double": 8, "int": 4, "floatX": 2, "__nv_bfloat16": 2}  # bf16 builds


def _eval_bytes(expr: str, src: str, before: int) -> int | str:
    """A launch's shared-memory argument as bytes: a constant, sizeof(T) * N, or a local set so above."""
    e = expr
    if re.fullmatch(r"[A-Za-z_]\w*", e):
        defs = list(re.finditer(rf"\b{e}\s*=\s*([^,;]+)[,;]", src[:before]))
        if not defs:
            return expr
        e = defs[-1].group(1)
    e = re.sub(r"sizeof\((\w+)\)", lambda m: str(SIZEOF.get(m.group(1), f"?{m.group(1)}")), e)
    if re.fullmatch(r"[\d\s*+()]+", e):
        return int(eval(e))  # digits and * + ( ) only
    return e if re.fullmatch(r"[A-Za-z_]\w*", expr) else expr  # a local: the expression it was set to


def dynamic_smem(src: str) -> dict[str, int | str]:
    """kernel name -> the largest dynamic shared memory it is launched with (LLMGEN_LAUNCH's 4th argument).
    A template launched as name<S> or (name<A, B>) is keyed by its name."""
    out: dict[str, int | str] = {}
    src = re.sub(r"namespace llmgen_fa2 \{.*?\} /\* namespace llmgen_fa2 \*/", "", src, flags=re.S)  # fa2_smem
    for m in re.finditer(r"(?<!define )LLMGEN_LAUNCH\(", src):
        args = _launch_args(src, m.end())
        if len(args) < 4 or args[3] == "0":
            continue
        v = _eval_bytes(args[3], src, m.start())
        name = args[0].lstrip("(").split("<")[0].strip()  # (name<NH, ...>) or name<S>: the template's name
        old = out.get(name, 0)
        out[name] = max(old, v) if isinstance(v, int) and isinstance(old, int) else v
    return out


# the FA2 kernels (templates/cuda/kernels/attention_fa2.cuh, namespace llmgen_fa2): kernel -> the function
# giving its dynamic shared memory from the kernel's first four template arguments
FA2_SMEM_FUNCTIONS = {
    "llmgen_fa2::attention_fwd_kernel": "fwd_smem_bytes",
    "llmgen_fa2::attention_bwd_dkv_kernel": "dkv_smem_bytes",
    "llmgen_fa2::attention_bwd_dq_kernel": "dq_smem_bytes",
}


def fa2_smem(src: str, name: str, args: str) -> int | None:
    """Dynamic shared memory of an FA2 kernel instance (name and args as parse_ptxas writes them): the
    header's constexpr <kind>_smem_bytes<HD, NW, MT, BN or BQ>(), read from the source and evaluated with
    the instance's arguments; None for other kernels (the FA2 launchers pass it as a constexpr local)."""
    fn = FA2_SMEM_FUNCTIONS.get(name)
    m = fn and re.search(rf"template <(int \w+(?:, int \w+)*)>\s*constexpr int {fn}\(\) {{ return ([^;]+); }}", src)
    a = re.match(r"<(\d+), (\d+), (\d+), (\d+),", args)
    if not m or not a:
        return None
    params = [p.split()[1] for p in m.group(1).split(", ")]
    expr = re.sub(r"\b[A-Z]\w*\b", lambda n: dict(zip(params, a.groups())).get(n.group(0), n.group(0)), m.group(2))
    return int(eval(expr)) if re.fullmatch(r"[\d\s*+()]+", expr) else None  # digits and * + ( ) only


# the parameters of templates/cuda/attention.cuh's AttentionShape, in order: a launcher's S::BC * S::HD
# is resolved from the instance's template arguments
ATTENTION_SHAPE = ("NH", "KV", "HD", "QS", "KS", "TPR", "RB", "BQ", "BC", "BK")


def resolve_shape(expr: int | str, args: str) -> int | str:
    """A shared-memory expression over S::<name> evaluated with an AttentionShape instance's arguments
    (args as template_args writes them); other expressions as they are."""
    m = re.match(r"<AttentionShape<([\d, -]+)>>$", args)
    if isinstance(expr, int) or not m:
        return expr
    values = dict(zip(ATTENTION_SHAPE, m.group(1).split(", ")))
    e = re.sub(r"\bS::(\w+)", lambda n: values.get(n.group(1), n.group(0)), expr)
    return _eval_bytes(e, "", 0) if "S::" not in e else expr


# --------------------------------------------------------------------------------------------
# building


def render(preset: str, dtype: str) -> str:
    from llmgen.codegen import Options, render as render_program
    from llmgen.spec import PRESETS

    return render_program(PRESETS[preset].replace(dtype=dtype), Options(target="cuda"))


def compile_build(name: str, work: Path, nvcc: str, include: Path) -> list[KernelUsage]:
    """Render build `name`, compile it with ptxas -v, return one row per function (entries first)."""
    preset, dtype = BUILDS[name]
    d = work / name
    d.mkdir(parents=True, exist_ok=True)
    src = render(preset, dtype)
    (d / "train.cu").write_text(src)
    cmd = nvcc_command(nvcc, include, d / "train.cu", d / "train.o")
    r = subprocess.run(cmd, capture_output=True, text=True)
    (d / "ptxas.txt").write_text(r.stdout + r.stderr)
    if r.returncode != 0:
        raise RuntimeError(f"{name}: {' '.join(cmd)} failed ({r.returncode}):\n{r.stderr[-4000:]}")
    rows = parse_ptxas(r.stdout + r.stderr)
    if not rows:
        raise RuntimeError(f"{name}: no ptxas report in nvcc's output (was -Xptxas -v dropped?)")
    dyn = dynamic_smem(src)
    for k in rows:
        fa2 = fa2_smem(src, k.name, k.args)
        k.smem_dynamic = fa2 if fa2 is not None else resolve_shape(dyn.get(k.name, 0), k.args)
    return sorted(rows, key=lambda k: (not k.entry, k.name, k.args))


def compile_all(work: Path, jobs: int = 2) -> dict[str, list[KernelUsage]]:
    tc = toolchain()
    if isinstance(tc, str):
        raise RuntimeError(tc)
    nvcc, include = tc
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = {name: pool.submit(compile_build, name, work, nvcc, include) for name in BUILDS}
        return {name: f.result() for name, f in futures.items()}


def markdown(results: dict[str, list[KernelUsage]], version: str) -> str:
    lines = [
        "# ptxas resource use of the emitted CUDA",
        "",
        f"Made by `python bench/ptxas.py` with nvcc {version} for {ARCH} "
        "(`-O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -Xptxas -v -c`, build_cuda's flags). "
        "Register counts depend on the nvcc version; regenerate this file when kernels change. "
        "tests/test_ptxas.py checks the spills of the current kernels, not these numbers.",
        "",
    ]
    for name, rows in results.items():
        spilling = [k for k in rows if k.spills]
        lines += [
            f"## {name}",
            "",
            f"{sum(k.entry for k in rows)} kernels (template instances counted apart); "
            + (
                f"**{len(spilling)} spill**: "
                + ", ".join(f"{k.label} ({k.spill_stores} B stores, {k.spill_loads} B loads)" for k in spilling)
                if spilling
                else "no spills"
            ),
            "",
            "| kernel | registers | barriers | smem static (B) | smem dynamic (B) | stack frame (B) "
            "| spill stores (B) | spill loads (B) |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for k in rows:
            label = f"`{k.label}`" + ("" if k.entry else " (device function)")  # code: <...> is not HTML
            dyn = k.smem_dynamic if isinstance(k.smem_dynamic, int) else f"`{k.smem_dynamic}`"
            lines.append(
                f"| {label} | {k.registers} | {k.barriers} | {k.smem_static} | {dyn} | "
                f"{k.stack} | {k.spill_stores} | {k.spill_loads} |"
            )
        lines.append("")
    return "\n".join(lines)


def parse_markdown(text: str) -> dict[str, list[dict]]:
    """The tables of a file markdown() wrote: build -> rows (column -> cell)."""
    out: dict[str, list[dict]] = {}
    build, header = None, None
    for line in text.splitlines():
        if line.startswith("## "):
            build, header = line[3:].strip(), None
            out[build] = []
        elif build and line.startswith("| ") and not line.startswith("| ---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            if header is None:
                header = cells
            else:
                out[build].append(dict(zip(header, cells)))
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(REPO / "bench" / "ptxas.md"), help="table file [bench/ptxas.md]")
    ap.add_argument("--work", default=None, help="folder for train.cu, train.o, ptxas.txt [a temporary one]")
    ap.add_argument("--jobs", type=int, default=2, help="builds compiled at once [2]")
    ap.add_argument("--check", action="store_true", help="exit 1 when a kernel spills")
    args = ap.parse_args()
    tc = toolchain()
    if isinstance(tc, str):
        print(f"error: {tc}", file=sys.stderr)
        return 1
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="llmgen-ptxas-"))
    try:
        results = compile_all(work, args.jobs)
    except RuntimeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    text = markdown(results, nvcc_version(tc[0]))
    Path(args.out).write_text(text)
    spills = [(b, k) for b, rows in results.items() for k in rows if k.spills]
    for b, rows in results.items():
        over = [
            k.label
            for k in rows
            if isinstance(k.smem_dynamic, int) and k.smem_static + k.smem_dynamic > MAX_SMEM_PER_BLOCK
        ]
        print(
            f"{b}: {sum(k.entry for k in rows)} kernels, {sum(1 for k in rows if k.spills)} spill, "
            f"max {max(k.registers for k in rows)} registers"
            + (f"; over {MAX_SMEM_PER_BLOCK} B of shared memory: {', '.join(over)}" if over else "")
        )
    for b, k in spills:
        print(
            f"  spill: {b} {k.label}: {k.spill_stores} B stores, {k.spill_loads} B loads, {k.stack} B stack, "
            f"{k.registers} registers"
        )
    print(f"wrote {args.out}")
    return 1 if args.check and spills else 0


if __name__ == "__main__":
    sys.exit(main())
