"""Llama 3 (3.0 / 3.1 / 3.2 shapes) as a forward graph, with each parameter's Hugging Face name.

Numerics follow Hugging Face's LlamaForCausalLM in fp32: token embedding (no position table),
pre-norm blocks with RMSNorm, q/k/v projections without biases, rotary embeddings in HF's
rotate-half layout (Llama 3.1's frequency scaling when the spec asks for it), causal
grouped-query attention scaled by 1/sqrt(head_dim), o_proj, then the SwiGLU MLP
down(silu(gate(x)) * up(x)); a final RMSNorm and the LM head (its own lm_head, or
embed_tokens when tie_embeddings). The loss covers the real vocabulary only.

nn.Linear stores (out, in) like llmgen, so no checkpoint tensor is transposed (hf_transpose
False). embed_tokens and lm_head have padded_vocab_size rows, of which the first vocab_size
are the HF rows (meta hf_rows). Init is HF's: normal(0, 0.02) for every matrix, ones for
the RMSNorm gains; weight decay applies to the 2-D tensors.
"""

from __future__ import annotations

from llmgen.ir.graph import Graph
from llmgen.spec import LlamaSpec


def build_forward(spec: LlamaSpec, B: int, T: int) -> Graph:
    if T > spec.max_seq_len:
        raise ValueError(f"sequence length T={T} exceeds the spec's max_seq_len={spec.max_seq_len}")
    C, L, Vp, F = spec.dim, spec.n_layers, spec.padded_vocab_size, spec.hidden_dim
    NH, KV, hd = spec.n_heads, spec.n_kv_heads, spec.head_dim
    g = Graph(spec, B, T)
    g.phase = "fwd"
    inv_freq = spec.rope_inv_freq()
    eps = spec.norm_eps

    def weight(name, shape, hf, **extra):
        return g.param(name, shape, hf=hf, hf_transpose=False, decay=True, init="normal", std=0.02, **extra)

    def gain(name, hf):
        return g.param(name, (C,), hf=hf, hf_transpose=False, decay=False, init="ones")

    def linear(x, w, name):
        return g.op("linear", [x, w], name=name)

    tokens = g.input("tokens", (B, T), "i32")
    targets = g.input("targets", (B, T), "i32")
    wte = weight("embed_tokens", (Vp, C), "model.embed_tokens.weight", hf_rows=spec.vocab_size)
    x = g.op("embed", [tokens, wte], name="encoded")  # no position table: RoPE
    g.layer_prefix = "l"  # block l's values are l<l>.<name>
    for l in range(L):
        g.layer = l
        hf = f"model.layers.{l}"
        p = {
            "attn_norm": gain(f"l{l}.attn_norm.w", f"{hf}.input_layernorm.weight"),
            "q": weight(f"l{l}.q_proj.w", (NH * hd, C), f"{hf}.self_attn.q_proj.weight"),
            "k": weight(f"l{l}.k_proj.w", (KV * hd, C), f"{hf}.self_attn.k_proj.weight"),
            "v": weight(f"l{l}.v_proj.w", (KV * hd, C), f"{hf}.self_attn.v_proj.weight"),
            "o": weight(f"l{l}.o_proj.w", (C, NH * hd), f"{hf}.self_attn.o_proj.weight"),
            "mlp_norm": gain(f"l{l}.mlp_norm.w", f"{hf}.post_attention_layernorm.weight"),
            "gate": weight(f"l{l}.gate_proj.w", (F, C), f"{hf}.mlp.gate_proj.weight"),
            "up": weight(f"l{l}.up_proj.w", (F, C), f"{hf}.mlp.up_proj.weight"),
            "down": weight(f"l{l}.down_proj.w", (C, F), f"{hf}.mlp.down_proj.weight"),
        }
        h = g.op("rmsnorm", [x, p["attn_norm"]], name=f"l{l}.attn_norm", eps=eps)[0]  # and attn_norm_rstd
        q = g.op("rope", [linear(h, p["q"], f"l{l}.q")], name=f"l{l}.q_rope", n_head=NH, inv_freq=inv_freq)
        k = g.op("rope", [linear(h, p["k"], f"l{l}.k")], name=f"l{l}.k_rope", n_head=KV, inv_freq=inv_freq)
        v = linear(h, p["v"], f"l{l}.v")
        att = g.op("attention", [q, k, v], name=(f"l{l}.atty", f"l{l}.att_lse"), n_head=NH, n_kv_head=KV)[0]
        x = g.op("add", [x, linear(att, p["o"], f"l{l}.attproj")], name=f"l{l}.residual2")
        h = g.op("rmsnorm", [x, p["mlp_norm"]], name=f"l{l}.mlp_norm", eps=eps)[0]
        act = g.op("swiglu", [linear(h, p["gate"], f"l{l}.gate"), linear(h, p["up"], f"l{l}.up")], name=f"l{l}.swiglu")
        x = g.op("add", [x, linear(act, p["down"], f"l{l}.down")], name=f"l{l}.residual3")
    g.layer = None
    norm = gain("norm.w", "model.norm.weight")
    h = g.op("rmsnorm", [x, norm], name="norm", eps=eps)[0]
    head = wte if spec.tie_embeddings else weight("lm_head", (Vp, C), "lm_head.weight", hf_rows=spec.vocab_size)
    logits = linear(h, head, "logits")  # (B,T,Vp)
    losses = g.op("xent", [logits, targets], name="losses", vocab=spec.vocab_size)
    loss = g.op("mean", [losses], name="loss")
    g.outputs.update(logits=logits, losses=losses, loss=loss)
    return g
