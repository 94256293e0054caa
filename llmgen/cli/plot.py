"""`llmgen plot RUN [-o FILE]`: train/val loss, learning rate and tokens/s of a run (matplotlib,
the `plot` extra; llmgen.plot)."""

from __future__ import annotations

from pathlib import Path


def register(sub) -> None:
    p = sub.add_parser("plot", help="PNG or SVG of train/val loss, learning rate and tokens/s over steps")
    p.add_argument("run", help="run folder holding log.jsonl")
    p.add_argument("-o", metavar="FILE", help="output image, .png or .svg [RUN/loss.png]")
    p.add_argument("--log-loss", action="store_true", help="log-scale loss axis")
    p.add_argument(
        "--smooth",
        type=float,
        default=0.0,
        metavar="S",
        help="exponential moving average of the train loss, weight S in [0, 1) on the past [0: off]",
    )
    p.set_defaults(func=run)


def run(args) -> int:
    from llmgen.plot import plot_run

    out = plot_run(Path(args.run), Path(args.o) if args.o else None, log_loss=args.log_loss, smooth=args.smooth)
    print(f"wrote {out}")
    return 0
