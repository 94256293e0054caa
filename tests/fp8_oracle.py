"""The FP8 oracle (issue 14, item 4): llmgen's FP8 training recipe for GPT-2 and Llama 3, in PyTorch on the CPU.

Contract
--------
A hand-written GPT-2 / Llama forward and backward (the transformers architectures, parameters under their
Hugging Face names, read from a model directory of tests/oracle.py's make_*_model_dir), in fp32 arithmetic, with
two switches in a Recipe:

- bf16   the storage of llmgen's bf16 build: the forward uses the fp32 master weights rounded to bf16 (to
         nearest even; the trainer's own copy may round stochastically: one bf16 ulp), every activation an op
         writes is rounded to bf16, and so is the gradient of every such activation in the backward
         (store()); parameter gradients, AdamW and its moments stay fp32. Statistics (layernorm / rmsnorm
         inside an op, the softmax, the loss) are fp32 within their op.
- fp8    the FP8 recipe on top, at exactly these points and no others: the inputs of the block linears
         (GPT-2 attn.c_attn, attn.c_proj, mlp.c_fc, mlp.c_proj; Llama q/k/v, o, gate/up, down projections):
           forward   the activation x and the (bf16) weight W, each quantised to E4M3 once;
                     y = x_q W_q^T (fp32 matmul) + bias;
           backward  the output gradient dY (bf16) quantised to E5M2 once; dX = dY_q W_q, dW = dY_q^T x_q
                     (fp32), the bias gradient from the unquantised dY.
         An input shared by several linears (Llama's q, k, v; gate, up) is quantised once; a weight once per
         optimizer step (the trainer casts weights after the update, not per micro-batch). Embeddings, the
         classifier, attention, norms, activations and the loss stay bf16 / fp32.
  Quantise-dequantise: q = float8(clamp(float32(x) * s, -MAX, MAX)) with torch's float8_e4m3fn /
  float8_e5m2 (round to nearest even; clamped first because torch's cast does not saturate: e5m2 overflows
  to Inf), dequantised as float32(q) * s_inv, s_inv = float32(1 / s). The scale of a tensor (fp8.cuh's
  rule, Transformer Engine's recipes): s = (MAX / amax) * 2^-margin in float32 (MAX 448 / 57344),
  FLT_MAX if that overflows, rounded down to a power of two with pow2; amax = max |x| of the stored tensor
  (NaN ignored). No usable amax (0, NaN, Inf): 1 with current scaling, the previous scale with delayed.
    current  (default) s from this tensor's own amax.
    delayed  s from the update after the previous use of this tensor: each use records its amax in an
             amax history of `history` slots (Transformer Engine's: rotated by -1 and its first slot zeroed
             at every update) and sets the next scale from max(history) ("max") or the newest amax
             ("most_recent"); the first use has s = 1.
  With fp8=False and bf16=False this is the fp32 oracle (tests/oracle.py, transformers) up to fp32
  reassociation; test_fp8_oracle.py checks that, the bf16 path against the bf16 build's tolerance table,
  and the quantisation points one by one.

Training follows tests/oracle.py's rules (llm.c data loader, gradient accumulation over total_batch // (B*T)
micro-batches, clip_grad_norm_, torch AdamW betas (0.9, 0.95), eps 1e-8, decay for 2-D weights, lr_at
schedules), so the later integration test passes the trainer's flags: B, T, steps, lr, total_batch, warmup,
final_frac, schedule, weight_decay, max_grad_norm, and the Recipe's margin / amax mode / history.

Public API: Recipe, Fp8Model (from_dir, forward, hf_parameters), ScaleBook, qdq, scale_from_amax,
fp8_step0_dump, train_fp8, EXPECTED_POINTS (the quantisation points of one layer, per architecture).
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import oracle

FORMATS = {"e4m3": (torch.float8_e4m3fn, 448.0), "e5m2": (torch.float8_e5m2, 57344.0)}
FLT_MAX = float(np.finfo(np.float32).max)


@dataclasses.dataclass(frozen=True)
class Recipe:
    """What is rounded and quantised (the module docstring); the defaults are the trainer's --dtype fp8."""

    fp8: bool = True
    bf16: bool = True
    margin: int = 0  # scale = MAX / amax / 2^margin
    amax: str = "current"  # "current" | "delayed"
    history: int = 16  # delayed: the amax history's length
    amax_algo: str = "max"  # delayed: "max" | "most_recent"
    pow2: bool = False  # scales rounded down to powers of two
    forward_format: str = "e4m3"  # activations and weights
    backward_format: str = "e5m2"  # output gradients

    def __post_init__(self):
        if self.fp8 and not self.bf16:
            raise ValueError("Recipe: fp8 needs bf16 (the FP8 build keeps bf16 activations around its GEMMs)")
        if self.amax not in ("current", "delayed"):
            raise ValueError(f"Recipe: amax must be 'current' or 'delayed', not {self.amax!r}")
        if self.amax_algo not in ("max", "most_recent"):
            raise ValueError(f"Recipe: amax_algo must be 'max' or 'most_recent', not {self.amax_algo!r}")
        if self.margin < 0 or self.history < 1:
            raise ValueError("Recipe: margin must be >= 0 and history >= 1")
        if self.forward_format not in FORMATS or self.backward_format not in FORMATS:
            raise ValueError(f"Recipe: formats are {sorted(FORMATS)}")


FP32 = Recipe(fp8=False, bf16=False)
BF16 = Recipe(fp8=False, bf16=True)


# ---- numbers ----------------------------------------------------------------------------------------
def bf16_round(t: torch.Tensor) -> torch.Tensor:
    return t.to(torch.bfloat16).float()


def amax_of(t: torch.Tensor) -> np.float32:
    a = t.detach().abs().float()
    return np.float32(torch.where(torch.isnan(a), torch.zeros_like(a), a).max().item())


def scale_from_amax(amax: float, fmt: str, margin: int, pow2: bool, fallback: float) -> np.float32:
    """(MAX / amax) * 2^-margin in float32; fallback when amax is 0, NaN or Inf; FLT_MAX on overflow"""
    a = np.float32(amax)
    if not (a > 0) or not np.isfinite(a):
        return np.float32(fallback)
    with np.errstate(over="ignore"):
        s = np.float32(np.ldexp(np.float32(FORMATS[fmt][1]) / a, -margin))
    if not np.isfinite(s):
        s = np.float32(FLT_MAX)
    if pow2:
        s = np.float32(np.ldexp(np.float32(1.0), int(np.frexp(s)[1]) - 1))
    return s


def qdq(x: torch.Tensor, fmt: str, scale: float) -> torch.Tensor:
    """quantise to fmt with scale (clamped to the finite range, rounded to nearest even), dequantise"""
    dtype, fmax = FORMATS[fmt]
    s = torch.tensor(np.float32(scale), dtype=torch.float32)
    s_inv = torch.tensor(1.0, dtype=torch.float32) / s
    return (x.float() * s).clamp(-fmax, fmax).to(dtype).float() * s_inv


class ScaleBook:
    """The per-tensor scales of one run: each quantisation point is a named slot (for example
    "h.0.mlp.c_fc.x"), with its own amax history under delayed scaling. Records every quantisation of the
    current step in `events` (name, format), and the last scale and amax per slot in `last`."""

    def __init__(self, recipe: Recipe):
        self.recipe = recipe
        self.state: dict[str, dict] = {}
        self.events: list[tuple[str, str]] = []
        self.last: dict[str, tuple[np.float32, np.float32]] = {}
        self.cached: dict[str, np.float32] = {}
        self.frozen = False  # evaluation: delayed scales are used, no amax is recorded

    def begin_step(self) -> None:
        """a new optimizer step: new weights to cast, a new event list"""
        self.events = []
        self.cached = {}

    def scale(self, name: str, x: torch.Tensor, fmt: str) -> np.float32:
        r = self.recipe
        if name.endswith(".w") and name in self.cached:  # a weight is cast once per optimizer step
            return self.cached[name]
        amax = amax_of(x)
        if r.amax == "current":
            s = scale_from_amax(amax, fmt, r.margin, r.pow2, 1.0)
        else:
            st = self.state.setdefault(name, {"scale": np.float32(1.0), "history": np.zeros(r.history, np.float32)})
            s = st["scale"]  # from the previous update
            if self.frozen:
                return s
            h = st["history"]  # this use's amax in the first slot, then the update
            h[0] = amax
            chosen = h[0] if r.amax_algo == "most_recent" else h.max()
            st["scale"] = scale_from_amax(chosen, fmt, r.margin, r.pow2, s)
            st["history"] = np.roll(h, -1)
            st["history"][0] = 0
        self.events.append((name, fmt))
        self.last[name] = (np.float32(s), amax)
        if name.endswith(".w"):
            self.cached[name] = np.float32(s)
        return s

    def quantize(self, name: str, x: torch.Tensor, fmt: str) -> torch.Tensor:
        return qdq(x, fmt, self.scale(name, x, fmt))


# ---- autograd pieces --------------------------------------------------------------------------------
class _Store(torch.autograd.Function):
    """a stored bf16 activation: the value rounded, and its gradient rounded on the way back"""

    @staticmethod
    def forward(ctx, x):
        return bf16_round(x)

    @staticmethod
    def backward(ctx, g):
        return bf16_round(g)


class _ParamBf16(torch.autograd.Function):
    """the bf16 copy of an fp32 master weight; its gradient reaches the master in fp32"""

    @staticmethod
    def forward(ctx, w):
        return bf16_round(w)

    @staticmethod
    def backward(ctx, g):
        return g


class _QForward(torch.autograd.Function):
    """quantise-dequantise in the forward (an activation or a weight feeding an FP8 GEMM); the gradient
    passes unchanged: the GEMM's dX / dW are made from the quantised operands and the quantised dY"""

    @staticmethod
    def forward(ctx, x, book, name, fmt):
        return book.quantize(name, x, fmt)

    @staticmethod
    def backward(ctx, g):
        return g, None, None, None


class _QBackward(torch.autograd.Function):
    """identity in the forward; the output gradient quantised-dequantised in the backward"""

    @staticmethod
    def forward(ctx, y, book, name, fmt):
        ctx.book, ctx.name, ctx.fmt = book, name, fmt
        return y.view_as(y)

    @staticmethod
    def backward(ctx, g):
        return ctx.book.quantize(ctx.name, g, ctx.fmt), None, None, None


# ---- the models -------------------------------------------------------------------------------------
# the quantisation points of layer i: (slot, format role); "x" activations, "w" weights, "dy" output gradients
EXPECTED_POINTS = {
    "gpt2": [
        "h.{i}.attn.c_attn.x",
        "h.{i}.attn.c_attn.w",
        "h.{i}.attn.c_attn.dy",
        "h.{i}.attn.c_proj.x",
        "h.{i}.attn.c_proj.w",
        "h.{i}.attn.c_proj.dy",
        "h.{i}.mlp.c_fc.x",
        "h.{i}.mlp.c_fc.w",
        "h.{i}.mlp.c_fc.dy",
        "h.{i}.mlp.c_proj.x",
        "h.{i}.mlp.c_proj.w",
        "h.{i}.mlp.c_proj.dy",
    ],
    "llama": [
        "layers.{i}.self_attn.qkv.x",
        "layers.{i}.self_attn.q_proj.w",
        "layers.{i}.self_attn.k_proj.w",
        "layers.{i}.self_attn.v_proj.w",
        "layers.{i}.self_attn.q_proj.dy",
        "layers.{i}.self_attn.k_proj.dy",
        "layers.{i}.self_attn.v_proj.dy",
        "layers.{i}.self_attn.o_proj.x",
        "layers.{i}.self_attn.o_proj.w",
        "layers.{i}.self_attn.o_proj.dy",
        "layers.{i}.mlp.gate_up.x",
        "layers.{i}.mlp.gate_proj.w",
        "layers.{i}.mlp.up_proj.w",
        "layers.{i}.mlp.gate_proj.dy",
        "layers.{i}.mlp.up_proj.dy",
        "layers.{i}.mlp.down_proj.x",
        "layers.{i}.mlp.down_proj.w",
        "layers.{i}.mlp.down_proj.dy",
    ],
}


class Fp8Model(torch.nn.Module):
    """GPT-2 or Llama 3 with the Recipe's roundings and quantisations. Parameters are fp32 masters under
    their Hugging Face names (hf_parameters()); forward(idx) gives fp32 logits (B, T, V)."""

    def __init__(self, arch: str, cfg: dict, state: dict[str, torch.Tensor], recipe: Recipe, model_dir=None):
        super().__init__()
        if arch not in EXPECTED_POINTS:
            raise ValueError(f"Fp8Model: unknown architecture {arch!r}")
        self.arch, self.cfg, self.recipe = arch, cfg, recipe
        self.book = ScaleBook(recipe)
        self.names = sorted(state)
        for n in self.names:
            self.register_parameter(n.replace(".", "__"), torch.nn.Parameter(state[n].detach().clone().float()))
        self.rotary = None
        if arch == "llama":
            from transformers import LlamaConfig
            from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

            self.rotary = LlamaRotaryEmbedding(LlamaConfig.from_pretrained(str(model_dir)))

    @classmethod
    def from_dir(cls, model_dir, recipe: Recipe = Recipe()) -> Fp8Model:
        """the model directory's weights as transformers loads them (tied heads included)"""
        cfg = json.loads((Path(model_dir) / "config.json").read_text())
        arch = cfg.get("model_type")
        oracle._quiet_transformers()
        if arch == "gpt2":
            hf = oracle.load_gpt2(model_dir)
        elif arch == "llama":
            hf = oracle.load_llama(model_dir)
        else:
            raise ValueError(f"{model_dir}: model_type {arch!r} is neither gpt2 nor llama")
        state = {n: p.detach() for n, p in hf.named_parameters()}  # tied weights appear once
        return cls(arch, cfg, state, recipe, model_dir)

    def hf_parameters(self) -> list[tuple[str, torch.nn.Parameter]]:
        return [(n, getattr(self, n.replace(".", "__"))) for n in self.names]

    # -- building blocks --
    def p(self, name: str) -> torch.Tensor:
        """a parameter as the forward uses it: the bf16 copy of the master in a bf16 recipe"""
        w = getattr(self, name.replace(".", "__"))
        return _ParamBf16.apply(w) if self.recipe.bf16 else w

    def store(self, x: torch.Tensor) -> torch.Tensor:
        return _Store.apply(x) if self.recipe.bf16 else x

    def quant_x(self, x: torch.Tensor, slot: str) -> torch.Tensor:
        r = self.recipe
        return _QForward.apply(x, self.book, slot + ".x", r.forward_format) if r.fp8 else x

    def linear(self, xq: torch.Tensor, w_out_in: torch.Tensor, bias: torch.Tensor | None, slot: str) -> torch.Tensor:
        """y = x W^T + b with W (out, in); x already through quant_x; stored as bf16 (store())"""
        r = self.recipe
        if r.fp8:  # the weight's scale is taken once per optimizer step (ScaleBook.begin_step)
            wq = _QForward.apply(w_out_in, self.book, slot + ".w", r.forward_format)
            y = _QBackward.apply(xq @ wq.t(), self.book, slot + ".dy", r.backward_format)
        else:
            y = xq @ w_out_in.t()
        if bias is not None:
            y = y + bias
        return self.store(y)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self._gpt2(idx) if self.arch == "gpt2" else self._llama(idx)

    # -- GPT-2 --
    def _layernorm(self, x, name):
        mean = x.mean(-1, keepdim=True)
        var = ((x - mean) ** 2).mean(-1, keepdim=True)
        eps = self.cfg.get("layer_norm_epsilon", 1e-5)
        return self.store((x - mean) / torch.sqrt(var + eps) * self.p(name + ".weight") + self.p(name + ".bias"))

    def _attention(self, q, k, v):
        """causal softmax attention, fp32 from the stored q, k, v: (B, H, T, hd) each (k, v expanded)"""
        T, hd = q.shape[-2], q.shape[-1]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hd))
        causal = torch.ones(T, T, dtype=torch.bool).tril()
        att = att.masked_fill(~causal, float("-inf")).softmax(dim=-1)
        return att @ v

    def _gpt2(self, idx):
        cfg = self.cfg
        B, T = idx.shape
        C, H = cfg["n_embd"], cfg["n_head"]
        hs = C // H
        wte = self.p("transformer.wte.weight")
        x = self.store(wte[idx] + self.p("transformer.wpe.weight")[:T])  # embedding: bf16
        for i in range(cfg["n_layer"]):
            pre = f"transformer.h.{i}."
            slot = f"h.{i}."
            h = self._layernorm(x, pre + "ln_1")
            qkv = self.linear(
                self.quant_x(h, slot + "attn.c_attn"),
                self.p(pre + "attn.c_attn.weight").t(),
                self.p(pre + "attn.c_attn.bias"),
                slot + "attn.c_attn",
            )  # Conv1D: W (in, out)
            q, k, v = (t.view(B, T, H, hs).transpose(1, 2) for t in qkv.split(C, dim=-1))
            a = self.store(self._attention(q, k, v).transpose(1, 2).reshape(B, T, C))
            p = self.linear(
                self.quant_x(a, slot + "attn.c_proj"),
                self.p(pre + "attn.c_proj.weight").t(),
                self.p(pre + "attn.c_proj.bias"),
                slot + "attn.c_proj",
            )
            x = self.store(x + p)
            h = self._layernorm(x, pre + "ln_2")
            f = self.linear(
                self.quant_x(h, slot + "mlp.c_fc"),
                self.p(pre + "mlp.c_fc.weight").t(),
                self.p(pre + "mlp.c_fc.bias"),
                slot + "mlp.c_fc",
            )
            g = self.store(0.5 * f * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (f + 0.044715 * f**3))))
            m = self.linear(
                self.quant_x(g, slot + "mlp.c_proj"),
                self.p(pre + "mlp.c_proj.weight").t(),
                self.p(pre + "mlp.c_proj.bias"),
                slot + "mlp.c_proj",
            )
            x = self.store(x + m)
        x = self._layernorm(x, "transformer.ln_f")
        return self.store(x @ wte.t())  # classifier: bf16

    # -- Llama 3 --
    def _rmsnorm(self, x, name):
        eps = self.cfg.get("rms_norm_eps", 1e-5)
        return self.store(self.p(name) * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)))

    def _llama(self, idx):
        cfg = self.cfg
        B, T = idx.shape
        D, H, KV = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
        hd = cfg.get("head_dim") or D // H
        emb = self.p("model.embed_tokens.weight")
        x = self.store(emb[idx])
        pos = torch.arange(T).unsqueeze(0)
        cos, sin = self.rotary(x, pos)  # (1, T, hd) fp32

        def rope(t):  # (B, heads, T, hd)
            half = t.shape[-1] // 2
            rot = torch.cat((-t[..., half:], t[..., :half]), dim=-1)
            return self.store(t * cos.unsqueeze(1) + rot * sin.unsqueeze(1))

        for i in range(cfg["num_hidden_layers"]):
            pre, slot = f"model.layers.{i}.", f"layers.{i}."
            h = self._rmsnorm(x, pre + "input_layernorm.weight")
            hq = self.quant_x(h, slot + "self_attn.qkv")  # one cast for q, k, v
            q, k, v = (
                self.linear(hq, self.p(pre + f"self_attn.{n}_proj.weight"), None, slot + f"self_attn.{n}_proj")
                for n in "qkv"
            )
            q = rope(q.view(B, T, H, hd).transpose(1, 2))
            k = rope(k.view(B, T, KV, hd).transpose(1, 2))
            v = v.view(B, T, KV, hd).transpose(1, 2)
            rep = H // KV
            k = k[:, :, None].expand(B, KV, rep, T, hd).reshape(B, H, T, hd)  # head h reads h // rep
            v = v[:, :, None].expand(B, KV, rep, T, hd).reshape(B, H, T, hd)
            a = self.store(self._attention(q, k, v).transpose(1, 2).reshape(B, T, H * hd))
            o = self.linear(
                self.quant_x(a, slot + "self_attn.o_proj"),
                self.p(pre + "self_attn.o_proj.weight"),
                None,
                slot + "self_attn.o_proj",
            )
            x = self.store(x + o)
            h = self._rmsnorm(x, pre + "post_attention_layernorm.weight")
            hq = self.quant_x(h, slot + "mlp.gate_up")  # one cast for gate, up
            gate = self.linear(hq, self.p(pre + "mlp.gate_proj.weight"), None, slot + "mlp.gate_proj")
            up = self.linear(hq, self.p(pre + "mlp.up_proj.weight"), None, slot + "mlp.up_proj")
            s = self.store(F.silu(gate) * up)
            d = self.linear(
                self.quant_x(s, slot + "mlp.down_proj"),
                self.p(pre + "mlp.down_proj.weight"),
                None,
                slot + "mlp.down_proj",
            )
            x = self.store(x + d)
        x = self._rmsnorm(x, "model.norm.weight")
        head = "model.embed_tokens.weight" if "lm_head.weight" not in self.names else "lm_head.weight"
        return self.store(x @ self.p(head).t())


# ---- step 0 and training ----------------------------------------------------------------------------
def _loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits.reshape(-1, logits.size(-1)).float(), targets.reshape(-1))


def fp8_step0_dump(model_dir, pattern, B, T, recipe: Recipe = Recipe(), threads=2) -> dict:
    """Logits, loss and {HF name: fp32 gradient (HF layout)} of the first micro-batch, no update (as
    oracle.step0_dump), plus the step's quantisation events and scales: "events" [(slot, format)] in call
    order, "scales" {slot: (scale, amax)}."""
    with oracle.torch_settings(threads):
        model = Fp8Model.from_dir(model_dir, recipe)
        model.book.begin_step()
        x, y = next(oracle._batch_stream(pattern, B, T))
        logits = model(x)
        loss = _loss(logits, y)
        loss.backward()
        grads = {n: p.grad.detach().numpy().copy() for n, p in model.hf_parameters()}
    return {
        "logits": logits.detach().numpy().astype(np.float32),
        "loss": loss.item(),
        "grads": grads,
        "events": list(model.book.events),
        "scales": dict(model.book.last),
    }


def train_fp8(
    model_dir,
    pattern,
    B,
    T,
    steps,
    lr,
    recipe: Recipe = Recipe(),
    total_batch=None,
    warmup=0,
    final_frac=0.0,
    schedule="cosine",
    weight_decay=0.0,
    max_grad_norm=1.0,
    threads=2,
) -> dict:
    """`steps` AdamW steps with oracle.train_model's rules (the flags are the trainer's). Returns dict(losses,
    lrs, grad_norms, next_batch_loss, model, events_per_step, scales (the last training step's {slot: (scale,
    amax)})). The next-batch loss is evaluated with the scales as they stand (delayed: no amax recorded)."""
    total_batch = B * T if total_batch is None else total_batch
    if total_batch % (B * T):
        raise ValueError(f"total_batch {total_batch} is not a multiple of B*T = {B * T}")
    accum = total_batch // (B * T)
    with oracle.torch_settings(threads):
        model = Fp8Model.from_dir(model_dir, recipe)
        params = [p for _, p in model.hf_parameters()]
        groups = [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ]
        opt = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=False)
        stream = oracle._batch_stream(pattern, B, T)
        losses, lrs, norms, events = [], [], [], []
        for step in range(1, steps + 1):
            opt.zero_grad(set_to_none=True)
            model.book.begin_step()
            micro = []
            for _ in range(accum):
                x, y = next(stream)
                loss = _loss(model(x), y)
                (loss / accum).backward()
                micro.append(loss.item())
            norm = torch.nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=False)
            step_lr = oracle.lr_at(step, steps, lr, warmup, final_frac, schedule)
            for g in opt.param_groups:
                g["lr"] = step_lr
            opt.step()
            losses.append(sum(micro) / accum)
            lrs.append(step_lr)
            norms.append(norm.item())
            events.append(list(model.book.events))
        scales = dict(model.book.last)
        x, y = next(stream)
        model.book.begin_step()
        model.book.frozen = True  # the evaluation leaves the amax histories alone
        with torch.no_grad():
            next_loss = _loss(model(x), y).item()
        model.book.frozen = False
    return dict(
        losses=losses,
        lrs=lrs,
        grad_norms=norms,
        next_batch_loss=next_loss,
        model=model,
        events_per_step=events,
        scales=scales,
    )
