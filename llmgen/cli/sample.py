"""`llmgen sample RUN`: continue a prompt from a run's latest checkpoint (or a checkpoint folder)
with a compiled model: transformers with its KV cache when installed, else the trainer's own
in-process library (llmgen.sample)."""

from __future__ import annotations

import sys
import time
from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("sample", help="continue a prompt from a run folder or checkpoint")
    p.add_argument("run", help="run folder (uses its latest checkpoint) or a checkpoint folder")
    p.add_argument("--prompt", default="", help="text to continue [<|endoftext|>: start of a document]")
    p.add_argument("-n", "--max-new-tokens", dest="n", type=int, default=64, help="tokens to generate per sample [64]")
    p.add_argument("--num-samples", type=int, default=1, help="how many samples to print [1]")
    p.add_argument("--temperature", type=float, default=1.0, help="softmax temperature; 0 = greedy [1.0]")
    p.add_argument("--top-k", type=int, default=40, help="sample among the k most likely tokens; 0 = all [40]")
    p.add_argument("--seed", type=int, default=0, help="random seed: the same seed prints the same text [0]")
    p.add_argument(
        "--backend",
        choices=("auto", "transformers", "compiled"),
        default="auto",
        help="transformers (KV cache) when installed, else the compiled trainer library [auto]",
    )
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where built libraries are kept [~/.cache/llmgen]")
    p.add_argument("-v", "--verbose", action="store_true", help="also print the backend and tokens/s on stderr")
    p.set_defaults(func=run)


def run(args) -> int:
    import numpy as np

    from llmgen.cli import CliError
    from llmgen.sample import (
        TextCodec,
        checkpoint_spec,
        generate,
        generate_batch,
        load_model,
        resolve_checkpoint,
        write_stream,
    )

    if args.n < 1 or args.num_samples < 1:
        raise CliError("-n and --num-samples must be >= 1")
    if args.temperature < 0:
        raise CliError(f"--temperature must be >= 0, got {args.temperature}")
    ckpt = resolve_checkpoint(Path(args.run))
    spec = checkpoint_spec(ckpt)
    codec = TextCodec(ckpt, spec)
    prompt = codec.encode(args.prompt) if args.prompt else [codec.start]
    if len(prompt) >= spec.max_seq_len:
        prompt = prompt[-(spec.max_seq_len - 1) :]
    t0 = time.perf_counter()
    model = load_model(
        ckpt,
        args.backend,
        Path(args.cache_dir) if args.cache_dir else None,
        max_tokens=len(prompt) + args.n,
        batch=args.num_samples,
    )
    t_load = time.perf_counter() - t0
    rng = np.random.default_rng(args.seed)
    t1 = time.perf_counter()
    steps = 0
    if args.num_samples == 1:  # one sample: printed as it is generated
        sys.stdout.write(args.prompt)

        def counted(it):
            nonlocal steps
            for tok in it:
                steps += 1
                yield tok

        write_stream(
            counted(generate(model, prompt, args.n, args.temperature, args.top_k, rng, stop=codec.stop)), codec
        )
    else:  # several: generated together (one forward for all), then printed
        per_step = list(
            generate_batch(
                model, prompt, args.n, args.temperature, args.top_k, rng, stop=codec.stop, num_samples=args.num_samples
            )
        )
        steps = len(per_step)
        for i in range(args.num_samples):
            if i:
                sys.stdout.write("\n---\n")
            sys.stdout.write(args.prompt)
            write_stream(iter([step[i] for step in per_step]), codec)
    if args.verbose:
        dt = time.perf_counter() - t1
        print(
            f"\n[{type(model).__name__}: loaded in {t_load:.2f} s; {steps} steps x {args.num_samples} "
            f"sample(s) in {dt:.2f} s, {steps * args.num_samples / max(dt, 1e-9):.1f} tok/s]",
            file=sys.stderr,
        )
    sys.stdout.write("\n")
    return 0
