"""Run a generated trainer inside the Python process and read its buffers by graph name.

The program is built as a shared library (library.c, which includes train.c without its main and
adds an extern API: llmgen.runtime.build.render_library) and loaded with ctypes. On the C target its
buffers are host memory and read directly; llmgen.runtime.gpu subclasses this for the CUDA target and copies device
memory with pycuda.
"""

from __future__ import annotations

import ctypes
from pathlib import Path

import numpy as np

from llmgen.checkpoint import bf16_to_f32
from llmgen.codegen import Options, program_for
from llmgen.compiler import compile_graph
from llmgen.runtime.build import build_trainer


class InProcessTrainer:
    """One compiled trainer for `spec` at batch shape (B, T), driven step by step from Python."""

    def __init__(self, spec, B: int, T: int, build_dir, init_from=None, seed: int = 1337, options: Options = Options()):
        self.spec, self.B, self.T = spec, B, T
        self.lib = ctypes.CDLL(str(self._build(spec, Path(build_dir), options)))
        self._declare()
        init = str(init_from).encode() if init_from is not None else None
        if not self.lib.llmgen_setup(B, T, init, seed):
            raise ValueError(f"llmgen_setup refused B={B} T={T} (max_seq_len {spec.max_seq_len})")
        g, _ = compile_graph(spec, B=B, T=T, fuse=options.fuse)
        self.shapes = {v.name: v.shape for v in g.values()}
        self.dtypes = {b.name: b.dtype for b in program_for(spec, options).buffers}
        for p in g.params:
            for pre in ("grad.", "m.", "v."):
                self.shapes[pre + p.name] = p.shape

    def _build(self, spec, build_dir: Path, options: Options) -> Path:
        return build_trainer(spec, options, build_dir, library=True)

    def _declare(self) -> None:
        L = self.lib
        i32p = ctypes.POINTER(ctypes.c_int32)
        L.llmgen_setup.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_ulonglong]
        L.llmgen_forward.argtypes = [i32p, i32p]
        L.llmgen_forward.restype = ctypes.c_float
        L.llmgen_backward.argtypes = [i32p, i32p]
        L.llmgen_set_dloss.argtypes = [ctypes.c_float]
        L.llmgen_update.argtypes = [ctypes.c_double, ctypes.c_int, ctypes.c_double]
        L.llmgen_update.restype = ctypes.c_float
        L.llmgen_buffer.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_void_p), ctypes.POINTER(ctypes.c_long)]
        L.llmgen_target.restype = ctypes.c_char_p

    def _tokens(self, a):
        if a is None:
            return None
        a = np.ascontiguousarray(a, np.int32)
        if a.shape != (self.B, self.T):
            raise ValueError(f"tokens of shape {a.shape}, this trainer runs ({self.B}, {self.T})")
        if a.min() < 0 or a.max() >= self.spec.vocab_size:
            raise ValueError(f"token ids must be in [0, {self.spec.vocab_size})")
        return a

    def forward(self, inputs, targets=None) -> float:
        x, y = self._tokens(inputs), self._tokens(targets)
        self._keep = (x, y)
        ptr = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)) if a is not None else None  # noqa: E731
        return float(self.lib.llmgen_forward(ptr(x), ptr(y)))

    def backward(self) -> None:
        x, y = self._keep
        p = lambda a: a.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))  # noqa: E731
        self.lib.llmgen_backward(p(x), p(y))

    def step(self, inputs, targets, lr: float, step: int, weight_decay: float = 0.0) -> tuple[float, float]:
        """One optimizer step on one micro-batch: returns (loss, grad norm before clipping)."""
        self.lib.llmgen_zero_grads()
        self.lib.llmgen_set_dloss(1.0)
        loss = self.forward(inputs, targets)
        self.backward()
        return loss, float(self.lib.llmgen_update(lr, step, weight_decay))

    def pointer(self, name: str) -> tuple[int, int]:
        ptr, n = ctypes.c_void_p(), ctypes.c_long()
        if not self.lib.llmgen_buffer(name.encode(), ctypes.byref(ptr), ctypes.byref(n)):
            raise KeyError(f"no buffer named {name!r} (parameters, grad.<param>, m.<param>, v.<param>, activations)")
        return ptr.value, n.value

    def _copy_out(self, ptr: int, n: int, dtype) -> np.ndarray:
        """n elements at ptr (host memory here; llmgen.runtime.gpu copies from the device)."""
        ctype = ctypes.c_uint16 if dtype == np.uint16 else ctypes.c_float
        return np.ctypeslib.as_array(ctypes.cast(ptr, ctypes.POINTER(ctype)), (n,)).copy()

    def read(self, name: str) -> np.ndarray:
        """A copy of the buffer `name` as float32 (bf16 buffers widened), shaped as in the graph."""
        ptr, n = self.pointer(name)
        if self.dtypes.get(name, "f32") == "bf16":
            flat = bf16_to_f32(self._copy_out(ptr, n, np.uint16))
        else:
            flat = self._copy_out(ptr, n, np.float32)
        return flat.reshape(self.shapes[name]) if name in self.shapes else flat


class CompiledModel:
    """The forward pass of a built trainer library, for sampling: logits of the last position of
    `batch` growing token sequences of equal length. No gradients and no shapes from the graph are
    needed, so it loads fast.

    The arenas are allocated once for (batch, capacity) tokens; each call carves them for its own
    shape (llmgen_set_batch) and runs the compiled forward over the whole sequences (the trainer
    has no KV cache: a token costs one forward of its context; the rows of a batch share the
    weights' trip through memory)."""

    def __init__(self, library: Path, spec, capacity: int, init_from, seed: int = 1337, batch: int = 1):
        self.spec, self.capacity, self.batch = spec, capacity, batch
        self.lib = ctypes.CDLL(str(library))
        L = self.lib
        i32p = ctypes.POINTER(ctypes.c_int32)
        L.llmgen_setup.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_ulonglong]
        L.llmgen_forward.argtypes = [i32p, i32p]
        L.llmgen_forward.restype = ctypes.c_float
        L.llmgen_set_batch.argtypes = [ctypes.c_int, ctypes.c_int]
        L.llmgen_read_logits.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_float)]
        if not L.llmgen_setup(batch, capacity, str(init_from).encode(), seed):
            raise ValueError(f"llmgen_setup refused B={batch} T={capacity} (max_seq_len {spec.max_seq_len})")
        self._row = np.empty(spec.padded_vocab_size, np.float32)

    def last_logits(self, tokens) -> np.ndarray:
        """float32 logits (b, vocab_size) after the last token of each row of `tokens` (b, t), b <= batch,
        t <= capacity (a 1-D sequence is one row, and gives (vocab_size,))."""
        x = np.ascontiguousarray(tokens, np.int32)
        rows = x.reshape(-1, x.shape[-1]) if x.ndim else x.reshape(1, 1)
        b, t = rows.shape
        if not (1 <= b <= self.batch and 1 <= t <= self.capacity) or not self.lib.llmgen_set_batch(b, t):
            raise ValueError(
                f"tokens of shape {x.shape}: this model takes up to {self.batch} rows of 1 to {self.capacity} tokens"
            )
        self.lib.llmgen_forward(rows.ctypes.data_as(ctypes.POINTER(ctypes.c_int32)), None)
        out = np.empty((b, self.spec.vocab_size), np.float32)
        for i in range(b):
            self.lib.llmgen_read_logits(i, t - 1, self._row.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
            out[i] = self._row[: self.spec.vocab_size]
        return out[0] if x.ndim == 1 else out
