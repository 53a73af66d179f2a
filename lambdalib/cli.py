"""`lambdalib` command line: thin wrappers over the library's modules."""
from __future__ import annotations

import argparse
import sys


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import summary_table

    rows = summary_table(img_size=args.img_size, num_classes=args.num_classes)
    header = f"{'label':<14} {'timm name':<24} {'params':>11} {'GFLOPs':>7}  lambda layer at ({args.img_size}px)"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['label']:<14} {r['name']:<24} {r['params']:>11,} {r['gflops']:>7.3f}  {r['lambda_site']}")
    return 0


def _config_from_args(args: argparse.Namespace):
    from dataclasses import fields

    from .config import RunConfig

    given = {f.name: getattr(args, f.name) for f in fields(RunConfig) if getattr(args, f.name, None) is not None}
    return RunConfig.from_params(**given)


def _add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field (--img-size for img_size, ...); unset flags keep the preset's value."""
    from dataclasses import MISSING, fields

    from .config import RunConfig

    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = f.default if f.default is not MISSING else None
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=f"(default {default})")
        else:
            parser.add_argument(flag, dest=f.name, default=None, metavar=f.name.upper(), help=f"(default {default!r})")


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import load_summary, run

    config = _config_from_args(args)
    try:
        run_dir = run(config, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    summary = load_summary(run_dir) or {}
    if int(__import__("os").environ.get("RANK", "0")) == 0:
        print(f"{summary.get('label')}: {summary.get('status')}"
              + (f" at epoch {summary['diverged_at']}" if summary.get("diverged_at") else "")
              + f"; best val loss {summary.get('best_val_loss')}, best val acc {summary.get('best_val_acc')}")
        print(f"run record: {run_dir}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="lambdalib", description="Lambda-ResNets on Imagenette with noisy labels: models, training, report."
    )
    parser.add_argument("--version", action="version", version=f"lambdalib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="table of the report's ten models: parameters, FLOPs, lambda site")
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser(
        "train", help="train one model on one noise level; re-running the same command resumes it",
        description="Train one model (report label like 'LR18_L2(rpe)' or a timm name) and write its run record "
                    "under results/runs/. Works under `torchrun --nproc_per_node N` (DDP).",
    )
    _add_config_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as err:  # user errors: one clear line, no traceback
        print(f"lambdalib {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
