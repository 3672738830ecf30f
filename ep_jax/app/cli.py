"""``ep-jax``: command-line entry point (``train``, ``eval``, ``credit``, ``gradcheck``, ``bench``)."""

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
    from ep_jax.app.config import DEFAULT_PRESET, FIELD_SECTION, PRESETS

    p = sub.add_parser(
        "train",
        help="train a network from a preset (default: digits)",
        description="Trains a preset; any config field can be overridden by its name (--beta 0.5 "
        "--hidden 500,500 --epochs 1); each flag sets one section.field of the nested config. The "
        "resolved config is printed and saved in --out with metrics.jsonl, summary.json, "
        "checkpoints and plots. Presets: " + ", ".join(sorted(PRESETS)),
    )
    p.add_argument("--preset", default=DEFAULT_PRESET, choices=sorted(PRESETS))
    p.add_argument("--out", default=None,
                   help="run directory: new, empty, or (with --resume) this run's; never "
                   "overwritten (default: a new runs/<preset>-<time>-<pid>)")
    p.add_argument("--data-dir", default=None,
                   help="offline dataset files (default $EP_JAX_DATA_DIR; see ep_jax.app.data)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the summary")
    fields = p.add_argument_group("config fields (default: the preset's value)")
    for name, section in FIELD_SECTION.items():
        parse, metavar = _field_parser(name)
        # SUPPRESS: only the flags given reach the namespace, so "--grad-clip none" is a value.
        fields.add_argument("--" + name.replace("_", "-"), dest=name, type=parse,
                            default=argparse.SUPPRESS, metavar=metavar, help=f"{section}.{name}")


def _field_parser(name: str):
    """(argument parser, metavar) of config field ``name``, from its annotated type."""
    from typing import Optional

    from ep_jax.app.config import field_type

    return {
        bool: (_bool, "true|false"), int: (int, "N"), float: (float, "X"), str: (str, "NAME"),
        Optional[float]: (_optional_float, "X|none"), Optional[str]: (_optional_str, "TEXT|none"),
        tuple[int, ...]: (_sizes, "N,N,..."),
        tuple[float, ...]: (_floats, "X,X,..."),
    }[field_type(name)]


def _bool(text: str) -> bool:
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, received {text!r}")


def _floats(text: str) -> tuple:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, received {text!r}")


def _optional_str(text: str):
    return None if text.lower() == "none" else text


def _optional_float(text: str):
    if text.lower() == "none":
        return None
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or none, received {text!r}")


def _train(args) -> int:
    from ep_jax.app.config import FIELD_SECTION, get_preset
    from ep_jax.app.train import new_run_dir, train

    overrides = {name: getattr(args, name) for name in FIELD_SECTION if hasattr(args, name)}
    cfg = get_preset(args.preset).with_overrides(**overrides)
    if args.resume and args.out is None:
        raise ValueError("--resume: expected --out, the run directory to continue")
    out = args.out or str(new_run_dir("runs", cfg.preset))
    if not args.quiet:
        print(f"config ({out}/config.json):")
        print(cfg.to_json(), flush=True)
    summary = train(cfg, out_dir=out, data_dir=args.data_dir, resume=args.resume, quiet=args.quiet)
    summary.pop("state")
    if args.quiet:
        print(json.dumps(summary))
    else:
        print(
            f"{cfg.preset}: test error {100 * summary['test_error']:.2f}% "
            f"(best {100 * summary['best_test_error']:.2f}% at epoch {summary['best_epoch']}), "
            f"{summary['epochs']} epochs in {summary['wall_s']:.1f} s"
        )
        print(f"run directory: {out} (summary.json, metrics.jsonl, config.json, checkpoints/)")
        for path in summary.get("plots", []):
            print(f"plot: {path}")
    return 0


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a run's checkpoint on its test split")
    p.add_argument("--checkpoint", required=True, help="a run directory written by ep-jax train")
    p.add_argument("--epoch", type=int, default=None, help="default: the latest checkpoint")
    p.add_argument("--data-dir", default=None)


def _eval(args) -> int:
    from ep_jax.app.train import evaluate_checkpoint

    print(json.dumps(evaluate_checkpoint(args.checkpoint, data_dir=args.data_dir, epoch=args.epoch)))
    return 0


def _add_credit(sub):
    p = sub.add_parser(
        "credit",
        help="credit diagnostics (Gamma, rho, naive state error) of a residual-model checkpoint",
        description="Restores a residual-model run (e.g. --preset residual-mnist10k) and prints "
        "one JSON object: per-layer Gamma (cosine between the EP credit and the backprop gradient "
        "dL/dh_l), rho (perturbation correlation), seed 004's displacement-based Gamma/rho and its "
        "naive state error, on the first --batch test examples (see ep_jax.credit).",
    )
    p.add_argument("--checkpoint", required=True, help="a run directory written by ep-jax train")
    p.add_argument("--epoch", type=int, default=None, help="default: the latest checkpoint")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--batch", type=int, default=None, help="default: the run's loop.credit_batch")
    p.add_argument("--random-targets", action="store_true",
                   help="score the credit against uniform random labels (control)")


def _credit(args) -> int:
    from ep_jax.app.train import credit_checkpoint

    print(json.dumps(credit_checkpoint(args.checkpoint, data_dir=args.data_dir, epoch=args.epoch,
                                       batch=args.batch, random_targets=args.random_targets)))
    return 0


def _add_bench(sub):
    # Only for --help; main() hands everything after "bench" to ep_jax.bench's own parser.
    sub.add_parser(
        "bench",
        help="relaxation-throughput benchmark suite (ep_jax.bench; ep-jax bench --help for its "
        "options)",
    )


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["bench"]:
        from ep_jax import bench

        try:
            return bench.main(argv[1:])
        except (ValueError, FileNotFoundError) as err:
            print(f"ep-jax bench: error: {err}", file=sys.stderr)
            return 2
    parser = argparse.ArgumentParser(prog="ep-jax", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_gradcheck(sub)
    _add_train(sub)
    _add_eval(sub)
    _add_credit(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    from ep_jax.app.checkpoint import CheckpointError
    from ep_jax.app.train import DivergenceError, RunDirError
    from ep_jax.solvers import RelaxationError

    try:
        commands = {"gradcheck": _gradcheck, "train": _train, "eval": _eval, "credit": _credit}
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, CheckpointError, RelaxationError, FloatingPointError,
            RunDirError, DivergenceError) as err:
        # Bad input and missing files are the user's to fix: one clear line, no traceback.
        print(f"ep-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
