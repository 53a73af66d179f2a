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
