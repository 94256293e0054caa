"""Model architectures: each turns a spec into a forward graph; `build_forward` picks by spec.arch."""

from __future__ import annotations


def build_forward(spec, B: int, T: int):
    """The forward graph of any spec (GPT-2 or Llama 3), chosen by its `arch`."""
    from llmgen.models import gpt2, llama

    builders = {"gpt2": gpt2.build_forward, "llama3": llama.build_forward}
    if spec.arch not in builders:
        raise ValueError(f"no model builder for arch {spec.arch!r} (known: {', '.join(builders)})")
    return builders[spec.arch](spec, B, T)
