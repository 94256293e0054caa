"""--dtype fp8 (issue 14, Deliver 1): "per-tensor scales from the current amax ... computed in the kernels that produce
each tensor where possible, not in extra passes". The compiler pairs each FP8 linear's input cast with the kernel that
wrote the input (llmgen/passes/precision.py fp8_casts, which `llmgen inspect --dtype fp8` prints; the schedule side is
llmgen/codegen/cuda.py fp8_fuse_amax): a LayerNorm / RMSNorm forward right before the linear writes the amax partials
(templates/cuda/kernels/norms.cuh NormAmax) and the cast takes them; every other cast runs fp8.cuh's amax pass.

These tests read the emitted train.cu: the amax pass is launched only for the casts inspect says are not fused, the
fused ones take the producer's partials, and the producer is the launch right before. The numbers are the amax pass's
(a max is exact in any order): the emulated trainer's FP8 oracle tests in tests/test_fp8_trainer.py are the numeric
check, and the current recipe's losses and grad norms were bit-identical to the amax-pass build's when this was
written (gpt2-tiny and a Llama GQA model, 8 steps)."""

import re

import pytest

from conftest import run_llmgen


@pytest.fixture(autouse=True)
def fp8_everywhere(monkeypatch):
    """every aligned block linear in FP8 (no size threshold): the tiny model's linears too"""
    monkeypatch.setenv("LLMGEN_FP8_MIN_WEIGHTS", "0")


def amax_sources(name: str, *flags: str) -> dict[str, str]:
    """inspect's x casts: weight member (as train.cu's LP[l] names it) -> where the cast's amax comes from"""
    out = run_llmgen("inspect", name, "--dtype", "fp8", *flags).stdout
    section = out.split("FP8 amax", 1)[1].split("FP8 buffers", 1)[0]
    rows = re.findall(r"^  x    (\S+) .*?  (layernorm forward|RMSNorm forward|amax pass)$", section, re.M)
    return {w.split(">.", 1)[1].replace(".", "_"): src for w, src in rows}


def functions(src: str) -> dict[str, str]:
    """every `static void name(...) {...}` of the source: name -> its body"""
    return {m.group(1): m.group(2) for m in re.finditer(r"^static void (\w+)\((.*?)^\}$", src, re.M | re.S)}


def forward_calls(src: str) -> list[tuple[str, str]]:
    """the forward schedule's calls, in order: (function, arguments), comments dropped and lines joined"""
    body = functions(src)["forward"]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S).replace("\n", " ")
    return re.findall(r"(\w+)\(([^;]*)\);", body)


def x_cast(body: str) -> str | None:
    """how an FP8 linear's forward casts its x: "fused" (the producer's partials), "amax pass", or None (no cast:
    the previous linear's codes)"""
    m = re.search(r"fp8_quantize<FP8_E4M3>\(fp8_x8, NULL, xmeta, x, BT, \d+, 1(, 0, 1)?\);", body)
    return None if m is None else "fused" if m.group(1) else "amax pass"


@pytest.mark.parametrize(
    "name, fused",
    [("gpt2-tiny", {"attn_c_attn_w", "mlp_c_fc_w"}), ("llama3.2-1b", {"q_proj_w", "gate_proj_w"})],
)
def test_the_norm_forward_gives_the_next_linear_its_amax(name, fused):
    """The x of a linear right after a norm (GPT-2's qkv and fc, Llama's q (k, v reuse its codes) and gate (up
    likewise)) takes its amax from the norm forward; the other x casts (after attention, GELU, SwiGLU) run the amax
    pass, as inspect says, and each fused cast's launch follows a norm launch that writes the partials of its x."""
    sources = amax_sources(name)
    assert {w for w, s in sources.items() if s != "amax pass"} == fused
    src = run_llmgen("emit", name, "--target", "cuda", "--dtype", "fp8").stdout
    fns = functions(src)
    calls = forward_calls(src)
    seen = {}
    for i, (fn, args) in enumerate(calls):
        if "_fp8" not in fn or fn not in fns:
            continue
        weight = re.search(r"LP\[l\]\.(\w+)", args).group(1)
        how = x_cast(fns[fn])
        if how is None:  # reads the x the previous FP8 linear cast
            assert weight not in sources
            continue
        seen[weight] = how
        assert how == ("fused" if sources[weight] != "amax pass" else "amax pass"), (weight, fn)
        if how == "fused":  # the launch before: a norm forward writing the partials of this linear's x
            prev_fn, prev_args = calls[i - 1]
            x = args.split(",")[2 if "gelu" in fn else 1].strip()
            assert "llmk::NormAmax amax =" in fns[prev_fn] and "fp8_amax_of = out;" in fns[prev_fn], prev_fn
            assert x in [a.strip() for a in prev_args.split(",")], (prev_fn, x)
    assert seen == {w: ("fused" if s != "amax pass" else "amax pass") for w, s in sources.items()}
    # every backward dY cast and the weights' casts keep the amax pass
    quantize = re.findall(r"fp8_quantize<FP8_E5M2>\([^;]*\);", src)
    assert quantize and all(q.endswith(", 1);") for q in quantize)


def test_the_delayed_recipe_and_bf16_builds_fuse_nothing():
    """The delayed recipe's casts write their own amax (the scale comes from the history): no producer writes
    partials, inspect says so. A bf16 build has no FP8 casts: its norms are the plain instantiations."""
    out = run_llmgen("inspect", "gpt2-tiny", "--dtype", "fp8", "--fp8-recipe", "delayed").stdout
    assert "FP8 amax (delayed recipe)" in out
    src = run_llmgen("emit", "gpt2-tiny", "--target", "cuda", "--dtype", "fp8", "--fp8-recipe", "delayed").stdout
    assert "llmk::NormAmax amax =" not in src and ", 1, 0, 1);" not in src
    bf16 = run_llmgen("emit", "gpt2-tiny", "--target", "cuda", "--dtype", "bf16").stdout
    assert "llmk::NormAmax amax =" not in bf16 and "fp8_amax_parts" not in bf16
