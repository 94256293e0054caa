"""The op table (llmgen/ir/ops.py) is the one place that says what an op is: every op has a kernel on
every target, and an op added from outside (a table row + one kernel template per target, as the
README's "Adding an op" walks through) computes its numpy reference's numbers on the C twin and on
the emulated CUDA.

Tolerances of the added-op test (fp32; the oracle is the numpy interpreter of the same graph with
the same weights and tokens):
  the op's output   bit-identical  x / (1 + |x|) is one add and one division, correctly rounded in
                                   numpy, C and the emulated CUDA alike, on bit-identical inputs
                                   (the embedding rows plus the position rows: one fp32 add)
  loss              2e-6 rel       the kernels sum in other orders than numpy
  grads             2e-5 rel       to each tensor's largest |value| (tests/matrix.py's GPT2_CUDA_FP32 bound)
"""

import dataclasses

import numpy as np
import pytest

from llmgen.codegen import TARGETS, Options, environment, render
from llmgen.ir import interp
from llmgen.ir.graph import Node
from llmgen.ir.ops import OPS, OpDef, f32, per_token
from llmgen.models import gpt2
from llmgen.spec import GPT2Spec


@pytest.mark.parametrize("target", sorted(TARGETS))
def test_every_op_has_a_kernel_on_every_target(target):
    """Each op's family template on each target defines a macro named after the op."""
    env = environment()
    missing = []
    for name, op in OPS.items():
        path = TARGETS[target].FAMILY.format(family=op.family)
        if not hasattr(env.get_template(path).module, name):
            missing.append(f"{name} ({path})")
    assert not missing, f"ops without a {target} kernel: {', '.join(missing)}"


def test_op_rows_name_their_outputs_and_dims():
    for name, op in OPS.items():
        assert callable(op.shape) and callable(op.ref) and callable(op.dims), name
        assert set(op.f32) <= set(op.outs), f"{name}: fp32 outputs {op.f32} are not among {op.outs}"
        assert set(op.token_axes) <= set(op.outs), name


def test_a_missing_kernel_is_a_clear_error(monkeypatch):
    """An op whose family template lacks its macro fails at render time with one line naming it."""
    spec = GPT2Spec(n_layer=1, n_head=2, n_embd=32, vocab_size=64, max_seq_len=16)
    monkeypatch.setitem(OPS, "gelu", dataclasses.replace(OPS["gelu"], family="nosuchfamily"))
    with pytest.raises(ValueError, match=r"the c target has no kernel for gelu \(c/nosuchfamily.c.j2\)"):
        render(spec, Options(target="c", fuse=False))


# --------------------------------------------------------------------------------------------
# adding an elementwise op, as the README's "Adding an op" shows: softsign(x) = x / (1 + |x|)


def softsign_ref(x):
    return (x / (np.float32(1) + np.abs(x))).astype(np.float32)


def softsign_bwd_ref(dy, x):
    d = (np.float32(1) + np.abs(x)).astype(np.float32)
    return (dy / (d * d)).astype(np.float32)


ROWS = {
    "softsign": OpDef(
        "softsign",
        "softsign",
        shape=lambda s, a: [f32(s[0])],
        ref=lambda x, a: [softsign_ref(x[0])],
        vjp=lambda g, n, d: [g.op("softsign_bwd", [d[0], n.inputs[0]], name=f"d{n.inputs[0].name}")],
        dims=lambda n, ctx: {"N": per_token(n.outputs[0].numel)},
    ),
    "softsign_bwd": OpDef(
        "softsign_bwd",
        "softsign",
        shape=lambda s, a: [f32(s[0])],
        ref=lambda x, a: [softsign_bwd_ref(x[0], x[1])],
        dims=lambda n, ctx: {"N": per_token(n.outputs[0].numel)},
    ),
}

TEMPLATES = {
    "c/softsign.c.j2": """\
{% macro softsign(k) %}
/* {{ k.comment }}: out = x / (1 + |x|) */
static void {{ k.name }}(float *out, const float *x) {
    #pragma omp parallel for simd
    for (long i = 0; i < (long)({{ k.dims.N }}); i++) out[i] = x[i] / (1.0f + fabsf(x[i]));
}
{% endmacro %}

{% macro softsign_bwd(k) %}
/* {{ k.comment }}: dx = dy / (1 + |x|)^2 */
static void {{ k.name }}(float *dx, const float *dy, const float *x) {
    #pragma omp parallel for simd
    for (long i = 0; i < (long)({{ k.dims.N }}); i++) {
        const float d = 1.0f + fabsf(x[i]);
        dx[i] = dy[i] / (d * d);
    }
}
{% endmacro %}
""",
    "cuda/softsign.cu.j2": """\
{% macro softsign(k) %}
/* {{ k.comment }}: out = x / (1 + |x|) */
__global__ void {{ k.name }}_kernel(floatX *out, const floatX *x, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = to_floatX(to_float(x[i]) / (1.0f + fabsf(to_float(x[i]))));
}
static void {{ k.name }}(floatX *out, const floatX *x) {
    const long n = (long)({{ k.dims.N }});
    LLMGEN_LAUNCH({{ k.name }}_kernel, dim3(cdiv(n, 256)), dim3(256), 0, 0, out, x, n);
    LAUNCH_CHECK("{{ k.name }}_kernel");
}
{% endmacro %}

{% macro softsign_bwd(k) %}
/* {{ k.comment }}: dx = dy / (1 + |x|)^2 */
__global__ void {{ k.name }}_kernel(floatX *dx, const floatX *dy, const floatX *x, long n) {
    const long i = (long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float d = 1.0f + fabsf(to_float(x[i]));
    dx[i] = to_floatX(to_float(dy[i]) / (d * d));
}
static void {{ k.name }}(floatX *dx, const floatX *dy, const floatX *x) {
    const long n = (long)({{ k.dims.N }});
    LLMGEN_LAUNCH({{ k.name }}_kernel, dim3(cdiv(n, 256)), dim3(256), 0, 0, dx, dy, x, n);
    LAUNCH_CHECK("{{ k.name }}_kernel");
}
{% endmacro %}
""",
}

SPEC = GPT2Spec(n_layer=1, n_head=2, n_embd=32, vocab_size=64, max_seq_len=16)
B, T = 2, 8


def gpt2_with_softsign(spec, B_, T_):
    """GPT-2's forward graph with softsign applied to the embedding (the residual stream's start)."""
    g = gpt2.build_forward(spec, B_, T_)
    emb = next(n for n in g.nodes if n.op == "embed")
    x = emb.outputs[0]
    node = Node("softsign", [x], [], {}, "fwd")
    node.outputs = OPS["softsign"].new_outputs(node, "softsign")
    nodes = []
    for n in g.nodes:
        if n is not emb:
            n.inputs = [node.outputs[0] if v is x else v for v in n.inputs]
        nodes.append(n)
        if n is emb:
            nodes.append(node)
    g.nodes = nodes
    return g


@pytest.fixture
def softsign_op(monkeypatch, tmp_path):
    """The op's two rows in the table, its two templates in an extra template folder, and GPT-2's
    builder swapped for one that uses it; returns the build options that find the templates."""
    for name, row in ROWS.items():
        monkeypatch.setitem(OPS, name, row)
    for path, text in TEMPLATES.items():
        (tmp_path / "templates" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "templates" / path).write_text(text)
    monkeypatch.setattr("llmgen.compiler.build_forward", gpt2_with_softsign)
    return (str(tmp_path / "templates"),)


@pytest.mark.parametrize("target", ["c", "cuda"])
def test_an_added_elementwise_op_computes_its_reference(softsign_op, tmp_path, target):
    from llmgen.compiler import training_graph
    from llmgen.runtime.gpu import CudaTrainer
    from llmgen.runtime.process import InProcessTrainer

    options = Options(target=target, template_dirs=softsign_op)
    src = render(SPEC, options)
    assert "softsign_bwd" in src and "x / (1 + |x|)" in src
    if target == "c":
        tr = InProcessTrainer(SPEC, B, T, tmp_path / "build", options=options)
    else:
        tr = CudaTrainer(SPEC, B, T, tmp_path / "build", options=options, emulate=True)
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, SPEC.vocab_size, (2, B, T)).astype(np.int32)
    tr.lib.llmgen_zero_grads()
    tr.lib.llmgen_set_dloss(1.0)
    loss = tr.forward(x, y)
    tr.backward()

    g = training_graph(SPEC, B, T)
    st = interp.State(g, {p.name: tr.read(p.name) for p in g.params})
    want = interp.run(g, st, {"tokens": x, "targets": y, "dloss": 1.0})
    emb = (st.params["wte"][x] + st.params["wpe"][:T][None]).astype(np.float32)
    np.testing.assert_array_equal(tr.read("softsign"), softsign_ref(emb))  # bit for bit
    np.testing.assert_array_equal(want["softsign"], softsign_ref(emb))
    assert abs(loss - float(want["loss"])) <= 2e-6 * float(want["loss"])
    for p in g.params:
        got, ref = tr.read("grad." + p.name), st.grads[p.name]
        assert np.abs(got - ref).max() <= 2e-5 * np.abs(ref).max(), p.name
