"""Fusion passes: small Graph -> Graph rewrites, each keeping the interpreter's results.

A pass never mutates the nodes or values of its input graph: it builds a new node list,
reusing the Values that keep their meaning and creating new Nodes (and new Values where
a role changes), so the graph before the pass can still be interpreted and compared.
"""

from __future__ import annotations

from llmgen.ir.graph import Graph, Node, Value


def _rebuild(g: Graph, replace: dict[int, list[Node]], subst: dict[int, Value]) -> Graph:
    """Copy g; node ids in `replace` become the given nodes (empty list = removed), and
    every input reading a Value id in `subst` reads the substitute instead."""
    out = g.copy()
    nodes = []
    for n in g.nodes:
        for m in replace.get(n.id, [n]):
            ins = [subst.get(v.id, v) for v in m.inputs]
            if any(a is not b for a, b in zip(ins, m.inputs)):
                m = Node(m.op, ins, m.outputs, m.attrs, m.phase, m.layer)
            nodes.append(m)
    out.nodes = nodes
    out.grads = {k: subst.get(v.id, v) for k, v in g.grads.items()}
    out.outputs = {k: subst.get(v.id, v) for k, v in g.outputs.items()}
    return out


def _producers(g: Graph) -> dict[int, Node]:
    return {v.id: n for n in g.nodes for v in n.outputs}


def fuse_softmax_xent(g: Graph) -> Graph:
    """xent + mean_bwd + xent_bwd -> softmax_xent: one pass over the logits writes the
    losses and overwrites the logits with dlogits (llm.c's fused classifier)."""
    users, prod = g.consumers(), _producers(g)
    replace: dict[int, list[Node]] = {}
    subst: dict[int, Value] = {}
    for n in g.nodes:
        if n.op != "xent_bwd":
            continue
        dlosses, logits, targets = n.inputs
        mb = prod.get(dlosses.id)
        xe = next((u for u in users[logits.id] if u.op == "xent"), None)
        if mb is None or mb.op != "mean_bwd" or xe is None or len(users[dlosses.id]) != 1:
            continue
        fused = Node(
            "softmax_xent",
            [logits, targets, mb.inputs[0]],
            [xe.outputs[0], n.outputs[0]],
            dict(vocab=xe.attrs["vocab"]),
            "fwd",
            xe.layer,
        )
        replace[xe.id] = [fused]
        replace[mb.id] = []
        replace[n.id] = []
    return _rebuild(g, replace, subst)


def fuse_matmul_epilogue(g: Graph) -> Graph:
    """linear -> bias_add (-> gelu) becomes one linear with a bias (and GELU) epilogue, and in
    the backward: gelu_bwd folds into the preceding linear_dx (dGELU epilogue) and bias_grad
    into the linear_dw of the same gradient (one pass over dy)."""
    users, prod = g.consumers(), _producers(g)
    replace: dict[int, list[Node]] = {}
    for n in g.nodes:
        if n.op == "linear" and not n.attrs.get("bias"):
            y = n.outputs[0]
            ba = users.get(y.id, [])
            if len(ba) != 1 or ba[0].op != "bias_add":
                continue
            badd = ba[0]
            z = badd.outputs[0]
            gl = [u for u in users.get(z.id, []) if u.op == "gelu"]
            if gl and all(u.op in ("gelu", "gelu_bwd") for u in users[z.id]):
                fused = Node(
                    "linear",
                    [*n.inputs, badd.inputs[1]],
                    [z, gl[0].outputs[0]],
                    dict(bias=True, gelu=True),
                    n.phase,
                    n.layer,
                )
                replace[gl[0].id] = []
            else:
                fused = Node("linear", [*n.inputs, badd.inputs[1]], [z], dict(bias=True), n.phase, n.layer)
            replace[n.id] = [fused]
            replace[badd.id] = []
        elif n.op == "gelu_bwd":
            d, pre = n.inputs
            mm = prod.get(d.id)
            if mm is None or mm.op != "linear_dx" or mm.attrs.get("dgelu") or len(users[d.id]) != 1:
                continue
            replace[mm.id] = [Node("linear_dx", [*mm.inputs, pre], n.outputs, dict(dgelu=True), mm.phase, mm.layer)]
            replace[n.id] = []
        elif n.op == "bias_grad":
            d = n.inputs[0]
            dw = next((u for u in users[d.id] if u.op == "linear_dw" and not u.attrs.get("bias")), None)
            if dw is None:
                continue
            # the fused node sits where the later of the two stood
            first, second = sorted((dw, n), key=g.nodes.index)
            replace[first.id] = []
            replace[second.id] = [
                Node("linear_dw", dw.inputs, [dw.outputs[0], n.outputs[0]], dict(bias=True), dw.phase, dw.layer)
            ]
    return _rebuild(g, replace, {})


RESIDUAL_NORMS = {"layernorm": "residual_layernorm", "rmsnorm": "residual_rmsnorm"}  # norm -> fused op


def fuse_residual_layernorm(g: Graph) -> Graph:
    """add(x, y) feeding a layernorm (or RMSNorm) -> residual_layernorm (residual_rmsnorm) writing
    the sum and the normed output in one pass over the row (the sum stays: it is the next residual
    stream)."""
    users = g.consumers()
    replace: dict[int, list[Node]] = {}
    for n in g.nodes:
        if n.op != "add" or n.phase != "fwd":
            continue
        s = n.outputs[0]
        ln = next((u for u in users.get(s.id, []) if u.op in RESIDUAL_NORMS and u.inputs[0] is s), None)
        if ln is None:
            continue
        fused = Node(
            RESIDUAL_NORMS[ln.op], [*n.inputs, *ln.inputs[1:]], [s, *ln.outputs], dict(ln.attrs), "fwd", ln.layer
        )
        replace[n.id] = []
        replace[ln.id] = [fused]
    return _rebuild(g, replace, {})


NORM_BWD_INPUTS = {"layernorm_bwd": 5, "rmsnorm_bwd": 4}  # inputs before the residual grad is added


def fuse_layernorm_bwd_residual(g: Graph) -> Graph:
    """layernorm_bwd's (or rmsnorm_bwd's) dx + the residual stream's gradient -> one norm backward
    that adds the residual gradient while writing dx (saves a read and a write of (B,T,C))."""
    users, prod = g.consumers(), _producers(g)
    replace: dict[int, list[Node]] = {}
    for n in g.nodes:
        if n.op != "add" or n.phase != "bwd" or n.outputs[0].role == "grad":
            continue
        for i in (0, 1):
            ln = prod.get(n.inputs[i].id)
            if ln is None or len(ln.inputs) != NORM_BWD_INPUTS.get(ln.op) or ln.outputs[0] is not n.inputs[i]:
                continue
            if len(users[n.inputs[i].id]) != 1:
                continue
            dres = n.inputs[1 - i]
            fused = Node(
                ln.op,
                [*ln.inputs, dres],
                [n.outputs[0], *ln.outputs[1:]],
                dict(ln.attrs, accumulate=True),
                "bwd",
                ln.layer,
            )
            replace[ln.id] = []
            replace[n.id] = [fused]
            break
    # the norm backward now writes the whole residual-stream gradient: fuse_norm_bwd_dbias (next in the pass
    # list) then takes the bias gradient of the projection that fed the stream from the same kernel
    return _rebuild(g, replace, {})


def fuse_norm_bwd_dbias(g: Graph) -> Graph:
    """A linear_dw with a bias gradient whose dy is the dx a layernorm backward wrote (GPT-2's attn.c_proj
    after ln_2, mlp.c_proj after the next block's ln_1 or ln_f): dy is the gradient of the residual stream the
    projection's output was added into, so its bias gradient sum_rows dy becomes a 4th output of the norm
    backward (attr dbias), which sums the rows of dx while it writes them; the linear_dw keeps dW only.
    RMSNorm (Llama: no biases) is left alone."""
    prod = _producers(g)
    replace: dict[int, list[Node]] = {}
    for n in g.nodes:
        if n.op != "linear_dw" or not n.attrs.get("bias") or len(n.outputs) != 2:
            continue
        ln = prod.get(n.inputs[0].id)
        if ln is None or ln.op != "layernorm_bwd" or ln.attrs.get("dbias") or ln.outputs[0] is not n.inputs[0]:
            continue
        if ln.id in replace:  # one bias gradient per norm backward
            continue
        replace[ln.id] = [
            Node(ln.op, ln.inputs, [*ln.outputs, n.outputs[1]], dict(ln.attrs, dbias=True), ln.phase, ln.layer)
        ]
        attrs = {k: v for k, v in n.attrs.items() if k != "bias"}
        replace[n.id] = [Node("linear_dw", n.inputs, n.outputs[:1], attrs, n.phase, n.layer)]
    return _rebuild(g, replace, {})


def accumulate_param_grads(g: Graph) -> Graph:
    """A parameter reached by several paths (GPT-2's tied wte) gets its gradient as add(g1, g2).
    Instead every contribution accumulates (+=) straight into the gradient buffer."""
    prod = _producers(g)
    out = g
    for pid, gv in g.grads.items():
        add = prod.get(gv.id)
        if add is None or add.op != "add":
            continue
        users = out.consumers()
        if any(len(users[v.id]) != 1 for v in add.inputs):
            continue
        param = gv.grad_of
        replace: dict[int, list[Node]] = {add.id: []}
        subst: dict[int, Value] = {}
        new_grad = None
        for v in add.inputs:
            p = prod[v.id]
            nv = Value(v.shape, v.dtype, gv.name, role="grad", grad_of=param, layer=gv.layer)
            new_outs = [nv if o is v else o for o in p.outputs]
            node = Node(p.op, p.inputs, new_outs, p.attrs, p.phase, p.layer)
            replace[p.id] = [node]
            prod.update({o.id: node for o in new_outs})
            new_grad = nv
        subst[gv.id] = new_grad
        out = _rebuild(out, replace, subst)
        out.grads[pid] = new_grad
    return out


def fuse_adamw(g: Graph) -> Graph:
    """Every per-parameter AdamW node -> one adamw_all node: one kernel walks all parameters."""
    steps = [n for n in g.nodes if n.op == "adamw"]
    if not steps:
        return g
    cols = [[n.inputs[i] for n in steps] for i in range(4)]
    shared = steps[0].inputs[4:]
    attrs = {k: v for k, v in steps[0].attrs.items() if k != "decay"}
    attrs["decay"] = tuple(n.attrs["decay"] for n in steps)
    outs = [n.outputs[i] for i in range(3) for n in steps]
    fused = Node("adamw_all", [v for col in cols for v in col] + list(shared), outs, attrs, "opt")
    replace = {n.id: [] for n in steps}
    replace[steps[-1].id] = [fused]
    return _rebuild(g, replace, {})
