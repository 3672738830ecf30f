"""``ep-jax``: command-line entry point (``train``, ``eval``, ``credit``, ``presets``, ``gradcheck``,
``bench``)."""

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


def _conv_layers(text: str) -> tuple:
    """``C,K,S,P,POOL[/C,K,S,P,POOL...]`` -> conv layer tuples (trailing fields may be left out)."""
    try:
        layers = tuple(tuple(int(v) for v in part.split(",")) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected conv layers 'channels,kernel[,stride,padding,pool]' separated by '/', "
            f"received {text!r}"
        )
    if any(not 2 <= len(layer) <= 5 for layer in layers):
        raise argparse.ArgumentTypeError(
            f"expected 2 to 5 numbers per conv layer (channels,kernel,stride,padding,pool), received {text!r}"
        )
    return layers


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
    p.add_argument("--energy", default="hopfield", choices=sorted(ENERGIES), metavar="NAME",
                   help="the energy of the random net (default: hopfield; allowed: "
                   f"{', '.join(sorted(ENERGIES))})")
    p.add_argument("--rule", default="ep-symmetric", choices=sorted(RULES) + ["all"], metavar="NAME",
                   help=f"the rule checked, or all: one JSON line per rule, a rule that does not "
                   f"apply reported as skipped (default: ep-symmetric; allowed: "
                   f"{', '.join(sorted(RULES))}, all)")
    p.add_argument("--beta", type=float, default=1e-3,
                   help="nudging strength; the rule sets its sign (default: 1e-3)")
    p.add_argument("--sizes", type=_sizes, default=(6, 5, 4, 3),
                   help="layer sizes input,hidden...,output (default: 6,5,4,3)")
    p.add_argument("--activation", default=None, choices=sorted(ACTIVATIONS),
                   help="rho of every layer (default: the energy's own: hard_sigmoid for hopfield, sigmoid for "
                   "restricted_hopfield)")
    p.add_argument("--batch", type=int, default=5, help="examples in the check (default: 5)")
    p.add_argument("--seed", type=int, default=0,
                   help="seed of the random net, inputs and labels (default: 0)")
    p.add_argument("--cost", default="squared_error", choices=["squared_error", "cross_entropy"],
                   help="the cost of the output (default: squared_error; allowed: squared_error, "
                   "cross_entropy)")
    p.add_argument("--step-size", type=float, default=0.5,
                   help="epsilon of the gradient-descent relaxation (default: 0.5)")
    p.add_argument("--tol", type=float, default=None, help="relaxation tolerance on the update norm "
                   "(default: 1e-12 with --x64, 1e-6 in float32)")
    p.add_argument("--weight-scale", type=float, default=0.5,
                   help="Glorot-uniform kernels times this factor: keeps units out of saturation "
                   "(default: 0.5)")
    p.add_argument("--x64", action="store_true",
                   help="run in float64 (recommended; default: float32)")
    p.add_argument("--precision", default="float32", choices=["float32", "bfloat16", "float16",
                                                         "bfloat16-products", "float16-products"],
                   help="also run the rule in float32 and in this precision (ep_jax.precision) on "
                   "the same float32 problem: cosine_vs_float32, rel_error_vs_float32, and each "
                   "one's rel_error/cosine against the float64 exact gradient (needs --x64; "
                   "default: float32, no comparison)")
    p.add_argument("--points", type=int, default=None,
                   help="ep-holomorphic: N points on the circle of radius --beta (default 8)")
    conv = p.add_argument_group("conv_hopfield (with --energy conv_hopfield; --sizes is then unused)")
    conv.add_argument("--in-shape", type=_sizes, default=(6, 6, 1), help="input H,W,C (default 6,6,1)")
    conv.add_argument("--conv", type=_conv_layers, default=((3, 3, 1, 1, 2),),
                      help="conv layers channels,kernel,stride,padding,pool separated by '/' "
                      "(default 3,3,1,1,2)")
    conv.add_argument("--dense", type=_sizes, default=(4,), help="dense layers after the last map (default 4)")


def _gradcheck(args) -> int:
    from ep_jax.gradcheck import GradcheckConfig, gradcheck

    cfg = GradcheckConfig(
        energy=args.energy, rule=args.rule, beta=args.beta, sizes=args.sizes,
        activation=args.activation, batch=args.batch, seed=args.seed, x64=args.x64, points=args.points,
        step_size=args.step_size, tol=args.tol, weight_scale=args.weight_scale, cost=args.cost,
        in_shape=args.in_shape, conv=args.conv, dense=args.dense, precision=args.precision,
    )
    if args.rule != "all":
        print(json.dumps(gradcheck(cfg)))
        return 0
    import dataclasses

    from ep_jax.rules import RULES

    for name in RULES:
        try:
            print(json.dumps(gradcheck(dataclasses.replace(cfg, rule=name))), flush=True)
        except ValueError as err:  # a rule this energy or precision does not support
            print(json.dumps({"rule": name, "skipped": str(err)}), flush=True)
    return 0


def _add_train(sub):
    from ep_jax.app.config import DEFAULT_PRESET, FIELD_SECTION, PRESETS

    p = sub.add_parser(
        "train",
        help="train a network from a preset (default: digits)",
        description="Trains a preset; any config field can be overridden by its name (--beta 0.5 "
        "--hidden 500,500 --epochs 1); each flag sets one section.field of the nested config. The "
        "resolved config is printed and saved in --out with metrics.jsonl, summary.json, "
        "checkpoints and plots; --config RUN/config.json reruns a saved run. Presets (ep-jax "
        "presets describes each): " + ", ".join(sorted(PRESETS)),
    )
    p.add_argument("--preset", default=None, choices=sorted(PRESETS), metavar="NAME",
                   help=f"the preset to start from (default: {DEFAULT_PRESET}; allowed: "
                   f"{', '.join(sorted(PRESETS))}; ep-jax presets describes each)")
    p.add_argument("--config", default=None, metavar="RUN/config.json",
                   help="start from a saved run's config.json instead of a preset (rerun it in a "
                   "new --out; flags still override single fields; default: none)")
    p.add_argument("--out", default=None,
                   help="run directory: new, empty, or (with --resume) this run's; never "
                   "overwritten (default: a new runs/<preset>-<time>-<pid>)")
    p.add_argument("--data-dir", default=None,
                   help="offline dataset files (default $EP_JAX_DATA_DIR; see ep_jax.app.data)")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoint in --out "
                   "(default: off, a new run)")
    p.add_argument("--quiet", action="store_true", help="no progress bar; print only the summary "
                   "(default: off)")
    hosts = p.add_argument_group(
        "multi-host", "One ep-jax process per host, the same command on each (docs/DISTRIBUTED.md); "
        "the mesh (--devices, --mesh) spans every host's devices; process 0 prints and writes.")
    hosts.add_argument("--distributed", action="store_true",
                       help="call jax.distributed.initialize() with what JAX detects (SLURM, TPU "
                       "pods, JAX_COORDINATOR_ADDRESS, ...) (default: off, one process)")
    hosts.add_argument("--coordinator-address", default=None, metavar="HOST:PORT",
                       help="process 0's address; implies --distributed (default: detected)")
    hosts.add_argument("--num-processes", type=int, default=None, metavar="N",
                       help="processes of the run; implies --distributed (default: detected)")
    hosts.add_argument("--process-id", type=int, default=None, metavar="I",
                       help="this process's rank in 0..N-1; implies --distributed (default: "
                       "detected)")
    fields = p.add_argument_group(
        "config fields", f"Each sets one section.field; the default shown is the {DEFAULT_PRESET} "
        "preset's (another --preset or a --config brings its own).")
    for name, section in FIELD_SECTION.items():
        parse, metavar = _field_parser(name)
        # SUPPRESS: only the flags given reach the namespace, so "--grad-clip none" is a value.
        fields.add_argument("--" + name.replace("_", "-"), dest=name, type=parse,
                            default=argparse.SUPPRESS, metavar=metavar, help=field_help(name))


def _attributes(doc: str) -> dict[str, str]:
    """``{name: text}`` of a Google docstring's ``Attributes:`` entries (``a, b: text`` gives both)."""
    entries: dict[str, str] = {}
    names: list[str] = []
    inside = False
    for line in doc.splitlines():
        if line.strip() == "Attributes:":
            inside = True
        elif inside and line and not line.startswith(" "):
            break  # the next section
        elif inside and line.strip():
            head, sep, text = line.strip().partition(": ")
            if line.startswith("  ") and not line.startswith("   ") and sep and all(
                    n.isidentifier() for n in head.split(", ")):
                names = head.split(", ")
                for n in names:
                    entries[n] = text
            else:
                for n in names:
                    entries[n] += " " + line.strip()
    return entries


def _shown(value) -> str:
    """A config value as the command line writes it."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "(empty)"
    return str(value)


def field_help(name: str) -> str:
    """``--help`` text of config field ``name``: its meaning (the ``Attributes:`` entry of its
    section's docstring, the one place it is written), its section, its default (the default
    preset's value), the allowed values (``config.choices``) and the model kinds that read it."""
    import dataclasses
    import inspect

    from ep_jax.app.config import DEFAULT_PRESET, FIELD_SECTION, KINDS, SECTIONS, choices, get_preset

    section = FIELD_SECTION[name]
    cls = SECTIONS[section]
    meaning = _attributes(inspect.getdoc(cls) or "").get(name, "").rstrip(".")
    if not meaning:
        raise ValueError(f"config field {section}.{name}: no entry in {cls.__name__}'s Attributes")
    used_by = next(f for f in dataclasses.fields(cls) if f.name == name).metadata["used_by"]
    default = get_preset(DEFAULT_PRESET).flat()[name]
    allowed = {kind: choices(name, kind) for kind in used_by}
    parts = [f"{section}.{name}", f"default: {_shown(default)}"]
    if any(a is not None for a in allowed.values()):
        lists = {kind: ", ".join(map(str, a)) for kind, a in allowed.items() if a is not None}
        if len(set(lists.values())) == 1:
            parts.append("allowed: " + next(iter(lists.values())))
        else:
            parts.append("allowed: " + "; ".join(f"{k}: {v}" for k, v in lists.items()))
    if set(used_by) != set(KINDS):
        parts.append("read by model.kind " + ", ".join(used_by))
    meaning = meaning.replace("``", "").replace(" (see the module docstring)", "")
    # argparse formats help with %: a literal percent sign must be doubled.
    return (meaning + ". [" + "; ".join(parts) + "]").replace("%", "%%")


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


def load_config(path: str):
    """The ``TrainConfig`` of a run's ``config.json`` (what ``ep-jax train --config`` reads).

    Raises:
      FileNotFoundError: no such file (a run directory is accepted and its config.json read).
      ValueError: the file is not JSON, or not a config (no section of one, unknown fields,
        invalid values); the message names the file.
    """
    from pathlib import Path

    from ep_jax.app.config import SECTIONS, TrainConfig

    path = Path(path)
    if path.is_dir():
        path = path / "config.json"
    if not path.is_file():
        raise FileNotFoundError(f"--config {path}: no such file (expected a run's config.json)")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"--config {path}: expected a config.json written by ep-jax train, "
                         f"received a file that is not JSON ({err})") from None
    if not isinstance(data, dict) or not set(SECTIONS) & set(data):
        found = sorted(data)[:8] if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"--config {path}: expected a config.json written by ep-jax train (an "
                         f"object with sections {sorted(SECTIONS)}), received {found}")
    try:
        return TrainConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        raise ValueError(f"--config {path}: {err}") from None


def _train(args) -> int:
    from ep_jax.app.config import DEFAULT_PRESET, FIELD_SECTION, get_preset
    from ep_jax.app.train import new_run_dir, train

    lead = True  # the process that prints (process 0 of a multi-process run)
    multi = (args.distributed, args.coordinator_address, args.num_processes, args.process_id)
    if any(v not in (None, False) for v in multi):
        import jax

        from ep_jax.distributed import initialize

        initialize(args.coordinator_address, args.num_processes, args.process_id)  # before any
        if jax.process_count() > 1 and args.out is None:  # other use of JAX's backend
            raise ValueError("--out: expected a run directory on a filesystem every process sees "
                             "(a multi-process run), received none")
        if jax.process_index() != 0:
            args.quiet, lead = True, False
    overrides = {name: getattr(args, name) for name in FIELD_SECTION if hasattr(args, name)}
    if args.config is not None and args.preset is not None:
        raise ValueError(f"--config {args.config}: expected either --config or --preset, received "
                         f"both (--preset {args.preset})")
    base = load_config(args.config) if args.config is not None else get_preset(
        args.preset or DEFAULT_PRESET)
    cfg = base.with_overrides(**overrides)
    if args.resume and args.out is None:
        raise ValueError("--resume: expected --out, the run directory to continue")
    out = args.out or str(new_run_dir("runs", cfg.preset))
    if not args.quiet and lead:
        print(f"config ({out}/config.json):")
        print(cfg.to_json(), flush=True)
    summary = train(cfg, out_dir=out, data_dir=args.data_dir, resume=args.resume, quiet=args.quiet)
    summary.pop("state")
    if not lead:
        return 0
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


def _add_checkpoint_args(p) -> None:
    """The flags ``eval`` and ``credit`` share: which run, which epoch, where the data are."""
    p.add_argument("--checkpoint", required=True,
                   help="a run directory written by ep-jax train (required, no default)")
    p.add_argument("--epoch", type=int, default=None,
                   help="the epoch whose checkpoint is used (default: the latest checkpoint)")
    p.add_argument("--data-dir", default=None,
                   help="offline dataset files (default: $EP_JAX_DATA_DIR, else a source "
                   "checkout's ../shared/data)")


def _add_eval(sub):
    p = sub.add_parser("eval", help="evaluate a run's checkpoint on its test split")
    _add_checkpoint_args(p)


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
    _add_checkpoint_args(p)
    p.add_argument("--batch", type=int, default=None, help="test examples scored (default: the run's loop.credit_batch)")
    p.add_argument("--random-targets", action="store_true",
                   help="score the credit against uniform random labels (control; default: "
                   "off, the true labels)")


def _credit(args) -> int:
    from ep_jax.app.train import credit_checkpoint

    print(json.dumps(credit_checkpoint(args.checkpoint, data_dir=args.data_dir, epoch=args.epoch,
                                       batch=args.batch, random_targets=args.random_targets)))
    return 0


def _add_presets(sub):
    p = sub.add_parser("presets", help="list the presets of ep-jax train with a one-line description",
                       description="Lists every preset of ep-jax train (--preset NAME) with its "
                       "one-line description; the full config: ep-jax train --preset NAME prints it.")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object {name: {description, kind, rule, dataset}} instead "
                   "of a table (default: a table)")


def _presets(args) -> int:
    from ep_jax.app.config import DEFAULT_PRESET, PRESETS

    if args.json:
        print(json.dumps({name: {"description": cfg.description, "kind": cfg.model.kind,
                                 "rule": cfg.rule.rule, "dataset": cfg.data.dataset}
                          for name, cfg in sorted(PRESETS.items())}, indent=2))
        return 0
    width = max(map(len, PRESETS))
    for name, cfg in sorted(PRESETS.items()):
        mark = " (default)" if name == DEFAULT_PRESET else ""
        print(f"{name:<{width}}  {cfg.description}{mark}")
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
    _add_presets(sub)
    _add_bench(sub)
    args = parser.parse_args(argv)
    from ep_jax.app.checkpoint import CheckpointError
    from ep_jax.app.train import DivergenceError, RunDirError
    from ep_jax.solvers import RelaxationError

    try:
        commands = {"gradcheck": _gradcheck, "train": _train, "eval": _eval, "credit": _credit,
                    "presets": _presets}
        return commands[args.command](args)
    except (ValueError, FileNotFoundError, CheckpointError, RelaxationError, FloatingPointError,
            RunDirError, DivergenceError) as err:
        # Bad input and missing files are the user's to fix: one clear line, no traceback.
        print(f"ep-jax {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
