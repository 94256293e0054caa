"""`llmgen inspect SPEC`: kernels, fused groups, memory plan and FLOPs, without building anything.

Needs only the compiler's front half (no tokenizer, no data code: a test checks that).
"""

from __future__ import annotations

from llmgen import __version__
from llmgen.cli import CliError, add_spec_args


def register(sub) -> None:
    p = sub.add_parser("inspect", help="kernels, fused groups, memory plan and FLOPs of a spec")
    add_spec_args(p)
    p.add_argument("-b", type=int, default=4, help="micro-batch for the activation sizes [4]")
    p.add_argument("-t", type=int, default=0, help="sequence length [min(1024, max_seq_len)]")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the whole schedule")
    p.add_argument(
        "--gpu",
        metavar="NAME",
        help="also print the roofline of one step on this GPU (h200, h100, a100): "
        "FLOPs and bytes per kernel class and the time they allow",
    )
    p.add_argument("--recompute", type=int, choices=(0, 1, 2), default=0, help="activation recompute level [0]")
    p.set_defaults(func=run)


def describe_kernel(node) -> str:
    """What `inspect` says of a (fused) kernel: the op table's description of the node."""
    from llmgen.ir.ops import describe

    return describe(node)


def _human(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1024
    return str(n)


def inspect_report(spec, B: int, T: int, fuse: bool = True) -> dict:
    from llmgen.compiler import compile_graph
    from llmgen.codegen.lower import flops_per_token

    g, plan = compile_graph(spec, B=1, T=1, fuse=fuse, dtype=spec.dtype)
    mem = plan.bytes()
    acts = mem["activations"] * B * T
    n_params = sum(p.numel for p in g.params)
    fp8 = plan.fp8.weight_bytes + plan.fp8.meta_bytes + plan.fp8.scratch_per_token * B * T if plan.fp8 else 0
    return {
        "graph": g,
        "plan": plan,
        "kernels": len(g.nodes),
        "params": n_params,
        "bytes": {
            "params": mem["params"],
            "grads": mem["grads"],
            "optimizer_state": mem["optimizer_state"],
            "activations": acts,
            "activations_unshared": mem["activations_unshared"] * B * T,
        },
        "peak": mem["params"] + mem["grads"] + mem["optimizer_state"] + acts + fp8,
        "flops_per_token": flops_per_token(g, T),
    }


def print_fp8(fp8, B: int, T: int, recipe: str = "current") -> None:
    """--dtype fp8: which linears' GEMMs run in FP8 (and why the others do not), and the FP8 buffers."""
    print("\nFP8 GEMMs (forward y = x W^T, dX = dY W, dW = dY^T x; E4M3 x and W, E5M2 dY, per-tensor scales):")
    rows: dict[tuple, list] = {}
    for c in fp8.choices:
        name = c.weight.name if c.layer is None else c.weight.name.replace(f"{c.layer}.", "<l>.", 1)
        rows.setdefault((name, c.N, c.K, c.fp8, c.why), []).append(c.layer)
    for (name, N, K, on, why), layers in rows.items():
        where = f"x{len(layers)} layers" if layers[0] is not None else ""
        print(f"  {'FP8 ' if on else 'bf16'} {name:<24} {N:>6} x {K:<6} {where:<11} {why}")
    if B * T % 16:
        print(f"  (B*T = {B * T} is not a multiple of 16: the FP8 program refuses this batch)")
    print_fp8_amax(fp8, recipe)
    print(f"FP8 buffers (memory plan; scratch at B={B} T={T}):")
    for b in fp8.buffers:
        total = b.bytes * B * T if b.arena == "fp8_scratch" else b.bytes
        print(f"  {b.name:<5} {b.arena:<12} {_human(total):>12}  {b.what}")
    scratch = fp8.scratch_per_token * B * T
    delayed = fp8.metas * (fp8.META_BYTES + 4 * 16) if recipe == "delayed" else 0
    if delayed:
        print(f"  {'next':<5} {'fp8_meta':<12} {_human(delayed):>12}  delayed recipe: a state and 16 amaxes per meta")
    print(f"  {'total':<18} {_human(fp8.weight_bytes + fp8.meta_bytes + scratch + delayed):>12}")


def print_fp8_amax(fp8, recipe: str = "current") -> None:
    """Where each FP8 cast gets the amax its scale comes from (precision.fp8_casts): the kernel that produced the
    tensor, or an amax pass over it before the cast."""
    if recipe == "delayed":
        print("FP8 amax (delayed recipe): every cast writes its tensor's amax itself; the scale is the history's")
        return
    print("FP8 amax (current recipe: each cast's scale from its tensor's amax, taken where):")
    rows: dict[tuple, list] = {}
    for c in fp8.casts:
        name = c.weight.name if c.layer is None else c.weight.name.replace(f"{c.layer}.", "<l>.", 1)
        source = c.source
        if c.tensor == "W":
            source += " (once per optimizer step, after the update)"
        rows.setdefault((c.tensor, name, source), []).append(c.layer)
    for (tensor, name, source), layers in rows.items():
        where = f"x{len(layers)} layers" if layers[0] is not None else ""
        print(f"  {tensor:<4} {name:<24} {where:<11} {source}")


def print_classifier_chunks(rep: dict, B: int, T: int) -> None:
    """The CUDA target's classifier in row chunks (passes/memory.py): rows per chunk, the logits buffer against
    the whole (B*T, Vp) logits, and the activations and peak with it."""
    from llmgen.passes.memory import plan_memory

    plan = rep["plan"]
    chunked = plan_memory(rep["graph"], plan.dtype if plan.fp8 is None else "fp8", chunk_classifier=True)
    c = chunked.classifier
    if c is None:
        print("\nclassifier chunks (CUDA target): none (no fused softmax + cross-entropy to chunk)")
        return
    tokens = B * T
    buf, whole = c.buffer_bytes(tokens), c.whole_bytes(tokens)
    acts = chunked.bytes()["activations"] * tokens + buf
    saved = rep["bytes"]["activations"] - acts
    print(
        f"\nclassifier chunks (CUDA target): {c.rows} rows x {c.vp} per chunk, {c.chunks(tokens)} chunk(s) at "
        f"B*T = {tokens}\n"
        f"  {'logits':<18} {_human(buf):>12}  instead of {_human(whole)} whole\n"
        f"  {'activations':<18} {_human(acts):>12}  with the chunk buffer (-{_human(saved)})\n"
        f"  {'peak':<18} {_human(rep['peak'] - saved):>12}"
    )


def run(args) -> int:
    from llmgen.spec import load_spec

    spec = load_spec(args.spec, args.dtype)
    B, T = args.b, args.t or min(1024, spec.max_seq_len)
    if B < 1 or T < 1:
        raise CliError(f"-b and -t must be >= 1 (got -b {B} -t {T})")
    if T > spec.max_seq_len:
        raise CliError(f"-t {T} exceeds the spec's max_seq_len={spec.max_seq_len}")
    rep = inspect_report(spec, B, T, fuse=not args.no_fuse)
    g = rep["graph"]
    print(
        f"llmgen {__version__} | spec {spec.digest()} | {spec.arch} n_layer={spec.n_layer} n_head={spec.n_head} "
        f"n_embd={spec.n_embd} vocab={spec.vocab_size} (padded {spec.padded_vocab_size}) | B={B} T={T}"
    )
    print(f"\nparameters: {rep['params']:,}")
    print(f"\nkernels per micro-batch step ({rep['kernels']} launches):")
    counts: dict[tuple, int] = {}
    for n in g.nodes:
        key = (n.phase, n.op, describe_kernel(n))
        counts[key] = counts.get(key, 0) + 1
    for (phase, op, desc), c in counts.items():
        print(f"  [{phase}] {op:<20} x{c:<4} {('fused: ' + desc) if desc else ''}")
    print("\nmemory plan:")
    keys = ("params", "grads", "optimizer_state", "activations")
    for k in keys:
        print(f"  {k:<18} {_human(rep['bytes'][k]):>12}")
    print(f"  {'activations if nothing shared':<18} {_human(rep['bytes']['activations_unshared']):>12}")
    if rep["plan"].fp8 is not None:
        print(f"  {'fp8 (below)':<18} {_human(rep['peak'] - sum(rep['bytes'][k] for k in keys)):>12}")
    print(f"  {'peak':<18} {_human(rep['peak']):>12}")
    if rep["plan"].fp8 is not None:
        print_fp8(rep["plan"].fp8, B, T, args.fp8_recipe)
    print_classifier_chunks(rep, B, T)
    fpt = rep["flops_per_token"]
    print(
        f"\nFLOPs per token (forward + backward): {fpt / 1e9:.3f} GFLOP  "
        f"(x {B * T} tokens = {fpt * B * T / 1e12:.3f} TFLOP per micro-batch)"
    )
    if not args.no_fuse:
        un = inspect_report(spec, B, T, fuse=False)
        dk = un["kernels"] - rep["kernels"]
        da = un["bytes"]["activations"] - rep["bytes"]["activations"]
        print(
            f"\nfusion: {rep['kernels']} kernels instead of {un['kernels']} (-{dk}, "
            f"{100 * dk / un['kernels']:.0f}% fewer); activations {_human(rep['bytes']['activations'])} instead of "
            f"{_human(un['bytes']['activations'])} (-{_human(da)}, {100 * da / un['bytes']['activations']:.0f}% less)"
        )
    if args.gpu:
        from llmgen.roofline import roofline_report

        try:
            text = roofline_report(spec, B, T, args.gpu, spec.dtype, recompute=args.recompute)
        except ValueError as e:
            raise CliError(str(e)) from None
        print(f"\nroofline on {args.gpu} (a prediction from the graph, not a measurement):\n{text}")
    if args.verbose:
        print("\nschedule:")
        print(g.dump())
    return 0
