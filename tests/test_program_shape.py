"""The emitted program's shape: loops over the layers that run exactly the unrolled schedule, a parameter
table that expands to every parameter, a layer-periodic memory plan that is as small as any plan can be,
and a source a person reads (its length does not grow with the depth, no line over 120 columns, no stray
template whitespace), through `llmgen emit`.

Oracles: the unrolled schedule is the lowering's launch list in graph order (one call per graph node),
independent of the loop finder; a loop is checked on the rendered C text, each iteration substituted.
The plan's peak is checked against the most bytes alive at any one node of the schedule (no plan can
be smaller), computed here from the graph alone.
"""

import re
import subprocess
import sys

import pytest

from llmgen.codegen import Options, program_for, render
from llmgen.codegen.lower import Loop, expand_schedule, render_layers
from llmgen.compiler import compile_graph
from llmgen.passes.memory import _align
from llmgen.passes.precision import storage_dtypes
from llmgen.spec import PRESETS, GPT2Spec, LlamaSpec

GPT2_5 = GPT2Spec(n_layer=5, n_head=2, n_embd=32, vocab_size=100, max_seq_len=32)
LLAMA_5 = LlamaSpec(dim=64, n_layers=5, n_heads=4, n_kv_heads=2, vocab_size=100, multiple_of=32, max_seq_len=32)
SPECS = {"gpt2-5": GPT2_5, "llama-5": LLAMA_5, "gpt2": PRESETS["gpt2"], "llama3.2-1b": PRESETS["llama3.2-1b"]}
PHASES = (("forward", "fwd"), ("backward", "bwd"), ("update", "opt"))


def function_body(src: str, name: str) -> list[str]:
    """The lines of `static void name(...) { ... }` in the rendered source, between its braces."""
    start = src.index(f"static void {name}(")
    lines = src[start:].splitlines()
    end = lines.index("}")
    return lines[1:end]


def statements(lines: list[str]) -> list[str]:
    """C statements of a function body, comments dropped and whitespace removed: `for (...) {` headers,
    `}` and `...;` statements, in order."""
    text = re.sub(r"\s+", "", re.sub(r"/\*.*?\*/", "", "\n".join(lines), flags=re.S))
    return re.findall(r"for\([^{]*\)\{|\}|[^;{}]*;", text)


def unroll(stmts: list[str], n_layer: int) -> list[str]:
    """Run the loops of a rendered function body: each `for (int l = a; l < b; l++)` / `l >= b; l--`
    body once per l, with LA[l + 1]-style indices and h[l+1] names replaced by the numbers."""
    flat, i = [], 0
    while i < len(stmts):
        m = re.fullmatch(r"for\(intl=([^;]+);l(<|>=)([^;]+);l(\+\+|--)\)\{", stmts[i])
        if not m:
            flat.append(stmts[i])
            i += 1
            continue
        end = stmts.index("}", i + 1)
        num = lambda e: int(eval(e.replace("N_LAYER", str(n_layer)), {"__builtins__": {}}))  # noqa: E731
        a, b = num(m.group(1)), num(m.group(3))
        for l in range(a, b) if m.group(2) == "<" else range(a, b - 1, -1):
            body = [
                re.sub(r"\[l([+-]\d+)?\]", lambda k, l=l: f"[{l + int(k.group(1) or 0)}]", s)
                for s in stmts[i + 1 : end]
            ]
            # the edge layer's choices: `if (l == K) f(...); else g(...);` and `l == K ? x : y` arguments
            j = 0
            while j < len(body):
                cond = re.match(r"if\(l==(\d+)\)", body[j])
                if cond:
                    assert body[j + 1].startswith("else"), body[j + 1]
                    body[j : j + 2] = [body[j][cond.end() :] if l == int(cond.group(1)) else body[j + 1][4:]]
                body[j] = re.sub(
                    r"l==(\d+)\?([^,():?]+):([^,():?]+)",
                    lambda k, l=l: k.group(2) if l == int(k.group(1)) else k.group(3),
                    body[j],
                )
                j += 1
            flat += body
        i = end + 1
    return flat


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("fuse,recompute", [(True, 0), (True, 1), (True, 2), (False, 0), (False, 2)])
@pytest.mark.parametrize("target", ["c", "cuda"])
def test_loops_run_exactly_the_unrolled_schedule(name, fuse, recompute, target):
    spec = SPECS[name].replace(dtype="bf16") if target == "cuda" else SPECS[name]
    options = Options(target=target, fuse=fuse, recompute=recompute)
    prog = program_for(spec, options)
    src = render(spec, options)
    # the dW stream's fork / done / wait / join statements (CUDA) are no launches of the graph's schedule: they are
    # left out here; tests/cuda/test_dw_stream.py checks where they stand
    dw = re.compile(r"(if\(.*\))?dw_(fork|done|wait|join)\(")
    for fn, phase in PHASES:
        want = [re.sub(r"\s+", "", x.flat()) for x in prog.flat[phase]]
        expanded = [re.sub(r"\s+", "", x.flat()) for x in expand_schedule(getattr(prog, fn))]
        assert [s for s in expanded if not dw.match(s)] == want, fn
        got = unroll([s for s in statements(function_body(src, fn)) if not dw.match(s)], spec.n_layer)
        assert [s for s in got if s not in ("(void)inputs;", "(void)targets;")] == want, fn
    loops = {fn: [b for b in getattr(prog, fn) if isinstance(b, Loop)] for fn, _ in PHASES}
    # the blocks repeat: forward and backward each loop over every layer, the first block (it reads the
    # embedding) by the edge layer's choices; the unfused update loops over every layer
    assert [(b.count, b.step, b.edge_layer) for b in loops["forward"]] == [(spec.n_layer, 1, 0)]
    assert [(b.count, b.step, b.edge_layer) for b in loops["backward"]] == [(spec.n_layer, -1, 0)]
    assert [b.count for b in loops["update"]] == ([] if fuse else [spec.n_layer])


def test_loop_bodies_name_the_layer_relative_to_l():
    prog = program_for(PRESETS["gpt2"], Options(target="c"))
    (loop,) = [b for b in prog.forward if isinstance(b, Loop)]
    assert loop.header == "for (int l = 0; l < N_LAYER; l++)"
    body = "\n".join(loop.lines(4))
    # the C target's schedule calls the kernels' bodies with literal sizes (codegen/c.py's bind_calls)
    assert "if (l == 0) PARALLEL layernorm_forward(LA[0].ln1, LA[0].ln1_mean, LA[0].ln1_rstd, A.encoded" in body
    assert "else PARALLEL residual_layernorm_forward(LA[l - 1].residual3, LA[l].ln1, LA[l].ln1_mean" in body
    assert "l == 0 ? A.encoded : LA[l - 1].residual3, A.attproj" in body
    assert "384, 341, 1024);  /* h[l].qkv (B,T,2304) */" in body
    (back,) = [b for b in prog.backward if isinstance(b, Loop)]
    assert back.header == "for (int l = N_LAYER - 1; l >= 0; l--)"
    assert "l == 0 ? A.dencoded : A.dresidual3" in "\n".join(back.lines(4))
    assert render_layers("LA[@3@].qkv, h#2#.x", 3) == "LA[l].qkv, h[l-1].x"


@pytest.mark.parametrize("name", ["gpt2", "llama3.1-8b", "gpt2-5", "llama-5"])
def test_parameter_table_expands_to_every_parameter(name):
    """What param_table_init() computes at startup (rows before the blocks, one block's rows with %d,
    N_LAYER times LAYER_PARAM_STRIDE apart, rows after), done here in Python, is the whole list."""
    spec = SPECS.get(name) or PRESETS[name]
    prog = program_for(spec, Options(target="c"))
    t = prog.param_table
    assert prog.layer_note == "" and len(t.layer) > 0
    rows = [(r.name, r.hf, r.offset) for r in t.before]
    for l in range(spec.n_layer):
        rows += [(r.pattern(r.name) % l, r.pattern(r.hf) % l, r.offset + l * t.stride) for r in t.layer]
    rows += [(r.name, r.hf, r.offset) for r in t.after]
    assert rows == [(r.name, r.hf, r.offset) for r in prog.params]
    if spec.arch == "gpt2":  # llm.c's file stacks each tensor over the layers
        want = [r.llmc_offset for r in prog.params]
        got = [r.llmc_offset for r in t.before]
        for l in range(spec.n_layer):
            got += [r.llmc_offset + l * r.llmc_stride for r in t.layer]
        assert got + [r.llmc_offset for r in t.after] == want


def most_alive(g, plan, dtype: str) -> int:
    """The most elements alive at any node of the schedule: a lower bound on every plan's peak."""
    stored = storage_dtypes(g, dtype)
    span = {}
    for i, n in enumerate(g.nodes):
        for v in n.inputs + n.outputs:
            if v.id in plan.act_offset:
                root = plan.alias.get(v.id, v.id)
                lo, hi = span.get(root, (i, i))
                span[root] = (min(lo, i), max(hi, i))
    size = {v.id: _align(v.numel * (2 if dtype == "bf16" and stored[v.id] == "f32" else 1)) for v in plan.act_values}
    return max(sum(size[r] for r, (s, e) in span.items() if s <= i <= e) for i in range(len(g.nodes)))


@pytest.mark.parametrize("name", ["gpt2", "llama3.2-1b"])
@pytest.mark.parametrize(
    "fuse,recompute,dtype",
    [(True, 0, "fp32"), (True, 1, "bf16"), (True, 2, "fp32"), (False, 0, "fp32"), (False, 2, "bf16")],
)
def test_layer_periodic_plan_is_as_small_as_any_plan(name, fuse, recompute, dtype):
    g, plan = compile_graph(SPECS[name], 1, 1, fuse=fuse, recompute=recompute, dtype=dtype)
    assert plan.act_elems == most_alive(g, plan, dtype)
    for place in plan.fields.values():  # every layer's instance of a field where the tables say
        if place.kind == "array":
            assert place.stride == place.size and place.offset % 16 == 0


def emitted(name: str, target: str) -> list[str]:
    spec = PRESETS[name].replace(dtype="bf16") if target == "cuda" else PRESETS[name]
    return render(spec, Options(target=target)).splitlines()


@pytest.fixture(scope="module")
def sources():
    return {(n, t): emitted(n, t) for n in ("gpt2", "gpt2-xl", "llama3.2-1b", "llama3.1-8b") for t in ("c", "cuda")}


def test_gpt2_train_c_is_at_most_2500_lines(sources):
    assert len(sources["gpt2", "c"]) <= 2500


def test_emitted_length_does_not_grow_with_the_depth(sources):
    n = {k: len(v) for k, v in sources.items()}
    print(n)
    for t in ("c", "cuda"):
        assert n["gpt2-xl", t] <= 1.05 * n["gpt2", t], t  # 48 layers instead of 12
        assert n["llama3.1-8b", t] <= 1.05 * n["llama3.2-1b", t], t  # 32 layers instead of 16


def test_no_line_over_120_columns_and_no_stray_whitespace(sources):
    for key, lines in sources.items():
        long = [(i + 1, line) for i, line in enumerate(lines) if len(line) > 120]
        assert not long, (key, long[:5])
        assert not [line for line in lines if line.startswith("LLMGEN_UNROLL")], key
        blank_before_close = [
            i + 1 for i in range(1, len(lines)) if lines[i].strip().startswith("}") and not lines[i - 1].strip()
        ]
        assert not blank_before_close, (key, blank_before_close[:5])
        assert not [i + 1 for i, line in enumerate(lines) if line != line.rstrip()], key


def test_find_buffer_is_a_table_in_the_library_build_only(sources):
    from llmgen.runtime.build import render_library

    src = "\n".join(sources["gpt2", "c"])
    lib = render_library(PRESETS["gpt2"], Options(target="c"))
    assert "static int find_buffer(" in lib and "static int find_buffer(" not in src
    assert '#define LLMGEN_LIBRARY\n#include "train.c"\n' in lib and "#ifndef LLMGEN_LIBRARY" in src  # no main()
    assert '{ "h%d.qkv", 1, offsetof(LayerActs, qkv), 2304 },' in lib
    assert 'strcmp(name, "h0.' not in src + lib  # no chain of one strcmp per buffer
    assert max(map(len, lib.splitlines())) <= 120


def test_emit_command_writes_the_source_without_compiling(tmp_path):
    out = tmp_path / "train.cu"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "llmgen",
            "emit",
            "gpt2-tiny",
            "--target",
            "cuda",
            "--dtype",
            "bf16",
            "--recompute",
            "1",
            "-o",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    text = out.read_text()
    assert text == render(PRESETS["gpt2-tiny"].replace(dtype="bf16"), Options(target="cuda", recompute=1))
    assert "bf16 mixed precision, activation recompute level 1" in text and not (tmp_path / "train").exists()
    r = subprocess.run([sys.executable, "-m", "llmgen", "emit", "gpt2-tiny"], capture_output=True, text=True)
    assert r.returncode == 0 and r.stdout == render(PRESETS["gpt2-tiny"], Options(target="c"))
    r = subprocess.run(
        [sys.executable, "-m", "llmgen", "emit", "gpt2-tiny", "-o", str(tmp_path / "no" / "x.c")],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and r.stderr.startswith("error: ") and "does not exist" in r.stderr
    assert "Traceback" not in r.stderr


@pytest.mark.parametrize("target", ["c", "cuda"])
def test_tidy_changes_only_whitespace(target):
    """The formatting pass after the templates (blank lines, long declarations and calls broken after their
    commas) leaves every token where it was: the source without whitespace is the templates' output."""
    from llmgen.codegen import TARGETS, environment, tidy

    spec = PRESETS["llama3.1-8b"].replace(dtype="bf16") if target == "cuda" else PRESETS["gpt2"]
    prog = program_for(spec, Options(target=target))
    raw = environment(()).get_template(TARGETS[target].PROGRAM).render(p=prog)
    assert re.sub(r"\s+", "", tidy(raw)) == re.sub(r"\s+", "", raw)
    assert max(len(line) for line in tidy(raw).splitlines()) <= 120
    if target == "cuda":  # the kernel templates' long declarations and launches, broken
        assert max(len(line) for line in raw.splitlines()) > 120


def test_a_parameter_layout_without_a_constant_stride_is_a_flat_table_and_says_so():
    from llmgen.codegen.lower import ParamRow, param_table

    def row(name, layer, offset):
        return ParamRow(
            name, name.split(".", 1)[-1], f"m.{layer}.w", offset, 4, (4,), (4,), False, 4, False, "ones", 0.0, layer
        )

    rows = [row("h0.w", 0, 0), row("h1.w", 1, 16), row("h2.w", 2, 48)]  # strides 16, then 32
    table, note = param_table(rows, 3)
    assert "constant stride" in note and table.layer == [] and [r.layer for r in table.before] == [None] * 3
    rows = [row("h0.w", 0, 0), row("h1.w", 1, 16), row("h2.w", 2, 32)]
    table, note = param_table(rows, 3)
    assert note == "" and table.stride == 16 and [r.name for r in table.layer] == ["h0.w"]
