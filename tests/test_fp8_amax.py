"""--dtype fp8 (issue 14, Deliver 1): "per-tensor scales from the current amax ... computed in the kernels that produce
each tensor where possible, not in extra passes". The compiler pairs each FP8 cast of a linear's input x or output
gradient dY with the kernel that wrote the tensor (llmgen/passes/precision.py fp8_casts, which `llmgen inspect --dtype
fp8` prints; the schedule side is llmgen/codegen/cuda.py fp8_fuse_amax): a LayerNorm / RMSNorm forward or a SwiGLU
right before the linear (x), a norm backward (the residual stream's gradient) or a SwiGLU backward right before the
dX GEMM (dY) writes the amax partials (templates/cuda/kernels/norms.cuh NormAmax, templates/cuda/swiglu.cuh) and the
cast takes them; every other cast runs fp8.cuh's amax pass.

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


SOURCES = r"(?:layernorm|RMSNorm|SwiGLU) (?:forward|backward)|amax pass"


def amax_sources(name: str, tensor: str, *flags: str) -> dict[str, str]:
    """inspect's casts of `tensor` (x, dY, W): weight member (as train.cu's LP[l] names it) -> where its amax comes
    from"""
    out = run_llmgen("inspect", name, "--dtype", "fp8", *flags).stdout
    section = out.split("FP8 amax", 1)[1].split("FP8 buffers", 1)[0]
    rows = re.findall(rf"^  {tensor} +(\S+) .*?  ({SOURCES})( \(.*\))?$", section, re.M)
    return {w.split(">.", 1)[1].replace(".", "_"): src for w, src, _ in rows}


def functions(src: str) -> dict[str, str]:
    """every `static void name(...) {...}` of the source: name -> its body"""
    return {m.group(1): m.group(2) for m in re.finditer(r"^static void (\w+)\((.*?)^\}$", src, re.M | re.S)}


def calls(src: str, fn: str) -> list[tuple[str, str]]:
    """the calls of function fn's body, in order: (function, arguments), comments dropped and lines joined"""
    body = functions(src)[fn]
    body = re.sub(r"/\*.*?\*/", "", body, flags=re.S).replace("\n", " ")
    return re.findall(r"(\w+)\(([^;]*)\);", body)


def how_cast(body: str, fmt: str) -> str | None:
    """how an FP8 GEMM casts its x (fmt E4M3) or dY (E5M2) with an amax: "fused" (the producer's partials), "amax
    pass", or None (no such cast: the codes another GEMM cast)"""
    m = re.search(rf"fp8_quantize<FP8_{fmt}>\([^;]*?, 1(, 0, ([12]))?\);", body)
    return None if m is None else f"fused {m.group(2)}" if m.group(1) else "amax pass"


def check_phase(src: str, phase: str, tensor: str, fmt: str, sources: dict[str, str]) -> None:
    fns, seen = functions(src), {}
    sched = calls(src, phase)
    for i, (fn, args) in enumerate(sched):
        if "_fp8" not in fn or fn not in fns:
            continue
        weight = re.search(r"LP\[l\]\.(\w+)", args)
        how = how_cast(fns[fn], fmt)
        if how is None:
            continue
        if weight is None:  # a dW GEMM names its weight by its gradient
            weight = re.search(r"LG\[l\]\.(\w+)", args)
        weight = weight.group(1)
        if weight in seen:  # a dY cast again (another linear's cast came between its dX and dW GEMMs)
            assert how == "amax pass"
            continue
        seen[weight] = "fused" if how.startswith("fused") else how
        assert seen[weight] == ("fused" if sources[weight] != "amax pass" else "amax pass"), (weight, fn)
        if how == "fused 1":  # the launch before: a kernel writing the partials of the tensor this GEMM casts
            prev_fn, prev_args = sched[i - 1]
            assert "fp8_amax_of = " in fns[prev_fn], prev_fn
        if how == "fused 2":  # the last launch before writing a second set: of this tensor
            prev_fn, prev_args = next(c for c in reversed(sched[:i]) if "fp8_amax_of2 = " in fns.get(c[0], ""))
        if how.startswith("fused"):
            at = 2 if ("gelu" in fn and tensor == "x") or (fn.startswith("linear_dw_bias") and tensor == "dY") else 1
            t = args.split(",")[at].strip()
            assert t in [a.strip() for a in prev_args.split(",")], (prev_fn, t)
            if prev_fn.startswith("swiglu_bwd"):  # dgate (its first output) is the second set, dup the first
                assert prev_args.split(",")[0 if how == "fused 2" else 1].strip() == t, (prev_fn, t, how)
    assert seen == {w: ("fused" if s != "amax pass" else "amax pass") for w, s in sources.items()}


@pytest.mark.parametrize(
    "name, fused_x, fused_dy",
    [
        ("gpt2-tiny", {"attn_c_attn_w", "mlp_c_fc_w"}, {"attn_c_proj_w", "mlp_c_proj_w"}),
        (
            "llama3.2-1b",
            {"q_proj_w", "gate_proj_w", "down_proj_w"},
            {"o_proj_w", "down_proj_w", "up_proj_w", "gate_proj_w"},
        ),
    ],
)
def test_the_norms_give_the_next_gemm_its_amax(name, fused_x, fused_dy):
    """The x of a linear right after a norm forward (GPT-2's qkv and fc, Llama's q (k, v reuse its codes) and gate
    (up likewise)) or a SwiGLU (Llama's down), and the dY of a projection whose output entered the residual stream
    (its gradient comes from the norm backward: GPT-2's attention and MLP projections, Llama's o and down) or of
    Llama's up (the SwiGLU backward's dup), take their amax from that kernel; the other casts (after attention and
    the GELU epilogue, the weights) run the amax pass, as inspect says, and each fused cast's launch follows a launch
    that writes the partials of the tensor it casts."""
    xs, dys = amax_sources(name, "x"), amax_sources(name, "dY")
    assert {w for w, s in xs.items() if s != "amax pass"} == fused_x
    assert {w for w, s in dys.items() if s != "amax pass"} == fused_dy
    assert set(amax_sources(name, "W").values()) == {"amax pass"}
    src = run_llmgen("emit", name, "--target", "cuda", "--dtype", "fp8").stdout
    check_phase(src, "forward", "x", "E4M3", xs)
    check_phase(src, "backward", "dY", "E5M2", dys)


def test_the_delayed_recipe_and_bf16_builds_fuse_nothing():
    """The delayed recipe's casts write their own amax (the scale comes from the history): no producer writes
    partials, inspect says so. A bf16 build has no FP8 casts: its norms are the plain instantiations."""
    out = run_llmgen("inspect", "gpt2-tiny", "--dtype", "fp8", "--fp8-recipe", "delayed").stdout
    assert "FP8 amax (delayed recipe)" in out
    src = run_llmgen("emit", "gpt2-tiny", "--target", "cuda", "--dtype", "fp8", "--fp8-recipe", "delayed").stdout
    assert "llmk::NormAmax amax =" not in src and ", 1, 0, 1);" not in src
    bf16 = run_llmgen("emit", "gpt2-tiny", "--target", "cuda", "--dtype", "bf16").stdout
    assert "llmk::NormAmax amax =" not in bf16 and "fp8_amax_parts" not in bf16
