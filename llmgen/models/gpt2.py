"""GPT-2 as a forward graph, with each parameter's Hugging Face name and layout.

Numerics follow Hugging Face's GPT2LMHeadModel: pre-LN blocks, tanh GELU, causal
attention scaled by 1/sqrt(head_dim), final LN, LM head tied to wte, loss over the
real vocabulary only. Linear weights are stored (out, in); HF's Conv1D stores (in, out),
so checkpoints transpose them (meta hf_transpose). wte has padded_vocab_size rows, of
which the first vocab_size are the HF rows (meta hf_rows).
"""

from __future__ import annotations

import math

from llmgen.ir.graph import Graph
from llmgen.spec import GPT2Spec


def build_forward(spec: GPT2Spec, B: int, T: int) -> Graph:
    if T > spec.max_seq_len:
        raise ValueError(f"sequence length T={T} exceeds the spec's max_seq_len={spec.max_seq_len}")
    C, L, Vp = spec.n_embd, spec.n_layer, spec.padded_vocab_size
    g = Graph(spec, B, T)
    g.phase = "fwd"
    proj_std = 0.02 / math.sqrt(2 * L)  # GPT-2 scales residual projections by 1/sqrt(2 * n_layer)

    def weight(name, shape, hf, std=0.02, transpose=False, **extra):
        return g.param(name, shape, hf=hf, hf_transpose=transpose, decay=True, init="normal", std=std, **extra)

    def vector(name, shape, hf, init):
        return g.param(name, shape, hf=hf, hf_transpose=False, decay=False, init=init)

    tokens = g.input("tokens", (B, T), "i32")
    targets = g.input("targets", (B, T), "i32")
    wte = weight("wte", (Vp, C), "transformer.wte.weight", hf_rows=spec.vocab_size)
    wpe = weight("wpe", (spec.max_seq_len, C), "transformer.wpe.weight")
    x = g.op("embed", [tokens, wte, wpe], name="encoded")  # token rows + position rows
    g.layer_prefix = "h"  # block l's values are h<l>.<name>, llm.c's activation names
    eps = spec.layer_norm_eps
    for l in range(L):
        g.layer = l
        hf = f"transformer.h.{l}"
        p = {
            "ln1w": vector(f"h{l}.ln_1.w", (C,), f"{hf}.ln_1.weight", "ones"),
            "ln1b": vector(f"h{l}.ln_1.b", (C,), f"{hf}.ln_1.bias", "zeros"),
            "qkvw": weight(f"h{l}.attn.c_attn.w", (3 * C, C), f"{hf}.attn.c_attn.weight", transpose=True),
            "qkvb": vector(f"h{l}.attn.c_attn.b", (3 * C,), f"{hf}.attn.c_attn.bias", "zeros"),
            "attprojw": weight(f"h{l}.attn.c_proj.w", (C, C), f"{hf}.attn.c_proj.weight", proj_std, True),
            "attprojb": vector(f"h{l}.attn.c_proj.b", (C,), f"{hf}.attn.c_proj.bias", "zeros"),
            "ln2w": vector(f"h{l}.ln_2.w", (C,), f"{hf}.ln_2.weight", "ones"),
            "ln2b": vector(f"h{l}.ln_2.b", (C,), f"{hf}.ln_2.bias", "zeros"),
            "fcw": weight(f"h{l}.mlp.c_fc.w", (4 * C, C), f"{hf}.mlp.c_fc.weight", transpose=True),
            "fcb": vector(f"h{l}.mlp.c_fc.b", (4 * C,), f"{hf}.mlp.c_fc.bias", "zeros"),
            "fcprojw": weight(f"h{l}.mlp.c_proj.w", (C, 4 * C), f"{hf}.mlp.c_proj.weight", proj_std, True),
            "fcprojb": vector(f"h{l}.mlp.c_proj.b", (C,), f"{hf}.mlp.c_proj.bias", "zeros"),
        }

        def linear(h, w, b, name, p=p):  # x @ w.T + b (the fusion pass makes it one kernel); p: this block's
            return g.op("bias_add", [g.op("linear", [h, p[w]], name=f"{name}_mm"), p[b]], name=name)

        h = g.op("layernorm", [x, p["ln1w"], p["ln1b"]], name=f"h{l}.ln1", eps=eps)[0]  # ln1, ln1_mean, ln1_rstd
        qkv = linear(h, "qkvw", "qkvb", f"h{l}.qkv")
        # multi-head attention: as many K/V heads as query heads, read from the packed qkv by row strides
        att = g.op("attention", [qkv], name=(f"h{l}.atty", f"h{l}.att_lse"), n_head=spec.n_head, n_kv_head=spec.n_head)[
            0
        ]
        x = g.op("add", [x, linear(att, "attprojw", "attprojb", f"h{l}.attproj")], name=f"h{l}.residual2")
        h = g.op("layernorm", [x, p["ln2w"], p["ln2b"]], name=f"h{l}.ln2", eps=eps)[0]
        act = g.op("gelu", [linear(h, "fcw", "fcb", f"h{l}.fch")], name=f"h{l}.fch_gelu")
        x = g.op("add", [x, linear(act, "fcprojw", "fcprojb", f"h{l}.fcproj")], name=f"h{l}.residual3")
    g.layer = None
    lnfw = vector("ln_f.w", (C,), "transformer.ln_f.weight", "ones")
    lnfb = vector("ln_f.b", (C,), "transformer.ln_f.bias", "zeros")
    h = g.op("layernorm", [x, lnfw, lnfb], name="lnf", eps=spec.layer_norm_eps)[0]
    logits = g.op("linear", [h, wte], name="logits")  # tied LM head: (B,T,Vp)
    losses = g.op("xent", [logits, targets], name="losses", vocab=spec.vocab_size)
    loss = g.op("mean", [losses], name="loss")
    g.outputs.update(logits=logits, losses=losses, loss=loss)
    return g
