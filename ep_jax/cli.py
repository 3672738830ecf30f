"""``ep-jax``: command-line entry point (``gradcheck``, ``train``)."""

from __future__ import annotations

import argparse
import json
import sys


def _sizes(text: str) -> tuple:
    try:
        sizes = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated layer sizes, received {text!r}")
    return sizes


def _add_gradcheck(sub):
    from ep_jax.activations import ACTIVATIONS
    from ep_jax.energies import ENERGIES
    from ep_jax.rules import RULES

    p = sub.add_parser(
        "gradcheck",
        help="compare a rule's gradient with implicit differentiation and BPTT",
        description=(
            "Relaxes a small random net to a tight tolerance and prints one JSON line comparing the "
            "rule's gradient of the mean cost with (a) implicit differentiation at the free "
            "equilibrium and (b) BPTT through the unrolled relaxation: rel_error/cosine vs implicit, "
            "rel_error_bptt/cosine_bptt vs BPTT. The default activation is the hard sigmoid (the "
            "seeds' energy as is): states are projected onto [0, 1] and the implicit solve handles "
            "the active set (saturated units are held fixed). Smooth activations (sigmoid, tanh) run "
            "unprojected; use them with --energy restricted_hopfield."
        ),
    )
    p.add_argument("--energy", default="hopfield", choices=sorted(ENERGIES))
    p.add_argument("--rule", default="ep-symmetric", choices=sorted(RULES))
    p.add_argument("--beta", type=float, default=1e-3)
    p.add_argument("--sizes", type=_sizes, default=(6, 5, 4, 3), help="e.g. 6,5,4,3")
    p.add_argument("--activation", default="hard_sigmoid", choices=sorted(ACTIVATIONS))
    p.add_argument("--batch", type=int, default=5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cost", default="squared_error", choices=["squared_error", "cross_entropy"])
    p.add_argument("--step-size", type=float, default=0.5)
    p.add_argument("--tol", type=float, default=None, help="default 1e-12 (x64) or 1e-6 (float32)")
    p.add_argument("--weight-scale", type=float, default=0.5)
    p.add_argument("--x64", action="store_true", help="run in float64 (recommended)")


def _gradcheck(args) -> int:
    from ep_jax.gradcheck import GradcheckConfig, gradcheck

    cfg = GradcheckConfig(
        energy=args.energy, rule=args.rule, beta=args.beta, sizes=args.sizes,
        activation=args.activation, batch=args.batch, seed=args.seed, x64=args.x64,
        step_size=args.step_size, tol=args.tol, weight_scale=args.weight_scale, cost=args.cost,
    )
    print(json.dumps(gradcheck(cfg)))
    return 0


def _add_train(sub):
    from ep_jax.rules import RULES

    p = sub.add_parser("train", help="train a network (for now: XOR with EP)")
    p.add_argument("--preset", default="xor", choices=["xor"])
    p.add_argument("--rule", default="ep-symmetric", choices=sorted(RULES))
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)


def _train(args) -> int:
    import dataclasses

    from ep_jax.train import TrainConfig, train

    cfg = TrainConfig(rule=args.rule, seed=args.seed)
    if args.epochs is not None:
        cfg = dataclasses.replace(cfg, epochs=args.epochs)
    print("config:", json.dumps(dataclasses.asdict(cfg)))
    result = train(cfg)
    print(f"final error: {100 * result['final_error']:.1f}%")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ep-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_gradcheck(sub)
    _add_train(sub)
    args = parser.parse_args(argv)
    return {"gradcheck": _gradcheck, "train": _train}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
