"""What tests/cuda/test_cuda_target.py (GPT-2) and test_llama_cuda.py (Llama) do alike: run a built
trainer on a test model folder `m` (model, pattern, B, T) and compare it with the PyTorch reference
under a tolerance table {dtype: {quantity: bound}}, keeping the worst error per quantity for the
report printed at the end of each module."""
import json

import numpy as np

from conftest import run_binary as _run_binary
from llmgen.checkpoint import read_safetensors


def run_binary(binary, *args, timeout=900):
    return _run_binary(binary, *args, timeout=timeout)


def read_log(run):
    return [json.loads(x) for x in open(run / "log.jsonl") if "train_loss" in x]


def rel_err(got, want):
    """max |got - want| relative to the largest |want| of the tensor"""
    return float(np.abs(np.asarray(got) - want).max() / (np.abs(want).max() + 1e-30))


class Checks:
    def __init__(self, tol: dict):
        self.tol = tol
        self.measured: dict[str, float] = {}

    def note(self, key, value):
        self.measured[key] = max(self.measured.get(key, 0.0), float(value))
        print(f"{key}: {value:.3e}")

    def train(self, binary, m, run, *extra, steps=10, B_=None, T_=None):
        """`steps` constant-LR AdamW steps (lr 1e-3, no decay, no val) from m's weights; the log rows"""
        run_binary(binary, "-e", m["model"], "-i", m["pattern"], "-b", B_ or m["B"], "-t", T_ or m["T"], "-x", steps,
                   "-l", "1e-3", "-k", "constant", "-c", 0, "-v", 0, *extra, "-o", run)
        return read_log(run)

    def check_dump(self, binary, m, ref, dtype, tmp):
        """step 0 (--dump): logits, loss and every parameter gradient against the reference dump"""
        run_binary(binary, "-e", m["model"], "-i", m["pattern"], "-b", m["B"], "-t", m["T"], "--dump", tmp / "dump")
        got = read_safetensors(tmp / "dump")
        tol = self.tol[dtype]
        err = np.abs(got["logits"] - ref["logits"]).max()
        self.note(f"{dtype} logits abs", err)
        assert err <= tol["logits"]
        err = abs(got["loss"][0] - ref["loss"]) / ref["loss"]
        self.note(f"{dtype} loss rel", err)
        assert err <= tol["loss"]
        assert set(k[5:] for k in got if k.startswith("grad.")) == set(ref["grads"])
        worst = 0.0
        for name, want in ref["grads"].items():
            e = rel_err(got["grad." + name], want)
            worst = max(worst, e)
            assert e <= tol["grads"], f"{name}: {e:.2e}"
        self.note(f"{dtype} grads rel", worst)

    def check_losses(self, log, ref, dtype):
        """10 logged losses and grad norms against the reference run"""
        got = np.array([r["train_loss"] for r in log])
        assert [r["step"] for r in log] == list(range(1, 11))
        err = np.max(np.abs(got - ref["losses"]) / np.abs(ref["losses"]))
        self.note(f"{dtype} 10 AdamW losses rel", err)
        assert err <= self.tol[dtype]["losses"]
        norms = np.array([r["grad_norm"] for r in log])
        err = np.max(np.abs(norms - ref["grad_norms"]) / np.abs(ref["grad_norms"]))
        self.note(f"{dtype} grad norms rel", err)
        assert err <= self.tol[dtype]["norms"]

    def report(self):
        for k, v in sorted(self.measured.items()):
            print(f"  {k:32s} {v:.3e}")
