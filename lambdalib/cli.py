"""`lambdalib` command line: thin wrappers over the library's modules."""
from __future__ import annotations

import argparse
import os
import sys
import time

from . import fmt


def _cmd_models(args: argparse.Namespace) -> int:
    from .models import summary_table

    rows = summary_table(img_size=args.img_size, num_classes=args.num_classes)  # an error before any output
    header = f"{'label':<14} {'timm name':<24} {'params':>11} {'GFLOPs':>7}  lambda layer at ({args.img_size}px)"
    print(header)
    print("-" * len(header))
    for r in rows:
        print(f"{r['label']:<14} {r['name']:<24} {r['params']:>11,} {r['gflops']:>7.3f}  {r['lambda_site']}")
    print("\nR18/R34 are torchvision's ResNets exactly (the report's baselines); lowercase 'resnet18'/'resnet34' "
          "are timm's networks (other init and data config), not these.")
    return 0


GRID_FIELDS = ("model", "noise", "seed", "run_name")  # what `reproduce` sets per run, not for the whole grid


def _given(args: argparse.Namespace, skip: tuple[str, ...] = ()) -> dict:
    """The RunConfig fields given as flags (unset flags keep the preset's or profile's value)."""
    from .config import parameter_fields

    return {f.name: getattr(args, f.name) for f in parameter_fields()
            if f.name not in skip and getattr(args, f.name, None) is not None}


def _add_config_flags(parser: argparse.ArgumentParser, skip: tuple[str, ...] = ()) -> None:
    """One flag per RunConfig field (--img-size for img_size, ...), with the field's help and choices;
    unset flags keep the preset's value."""
    from .config import parameter_fields, preset_fields

    preset_set = preset_fields()
    for f in parameter_fields():
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        shown = "the preset's" if f.name in preset_set else repr(f.default)
        help_text = f"{f.metadata['help']} (default {shown})".replace("%", "%%")
        if f.type == "bool":
            parser.add_argument(flag, dest=f.name, action="store_true", default=None, help=help_text)
        else:
            choices = f.metadata.get("choices")
            parser.add_argument(flag, dest=f.name, default=None, choices=choices,
                                metavar="{" + ",".join(choices) + "}" if choices else f.name.upper(), help=help_text)


def _cmd_train(args: argparse.Namespace) -> int:
    from .config import RunConfig
    from .train import load_summary, run

    config = RunConfig.from_params(**_given(args))
    try:
        run_dir = run(config, progress=not args.no_progress)
    except KeyboardInterrupt:
        return 130
    finally:
        import torch.distributed

        if torch.distributed.is_initialized():  # under torchrun
            torch.distributed.destroy_process_group()
    summary = load_summary(run_dir) or {}
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun, rank 0 speaks
        print(_run_line(summary))
        print(f"run record: {run_dir}")
    return 0


def _run_line(summary: dict) -> str:
    """'LR18_L2(rpe): complete; best val loss 1.234 (epoch 3), best val acc 45.6% (epoch 3)'."""
    line = f"{summary.get('label')}: {summary.get('status')}"
    if summary.get("diverged_at"):
        line += f" at epoch {summary['diverged_at']} ({summary.get('diverged_reason', '?')})"
    if summary.get("best_val_loss") is None:
        return line + "; no epoch finished, so no best values"
    return (line + f"; best val loss {summary['best_val_loss']:.4f} (epoch {summary['best_val_loss_epoch']}), "
            f"best val acc {summary['best_val_acc']:.1%} (epoch {summary['best_val_acc_epoch']})")


def _cmd_data(args: argparse.Namespace) -> int:
    from . import data, figures, files
    from .paths import results_dir

    if args.samples < 1:
        raise ValueError(f"--samples {args.samples}: the sample grid needs at least 1 image")
    data.noise_column(args.noise, synthetic_hint=False)  # a bad --noise fails before anything is printed
    out = files.figure_target(args.out, results_dir() / "figures" / f"samples_noise{args.noise * 100:g}.png")
    info = data.overview(args.data)
    print(f"data: {info['root']}\n")
    print(info["classes"].to_string(), "\n")
    print(info["noise"].to_string())
    figures.plot_samples(info["root"], args.noise, n=args.samples, path=out)
    print(f"\nsample grid (clean vs noisy labels): {out}")
    return 0


def _noise_levels(text: str | None) -> list[float] | None:
    if not text:
        return None
    try:
        return [float(n) for n in text.split(",")]
    except ValueError:
        raise ValueError(f"--noise {text!r}: expected comma-separated fractions, e.g. 0,0.25,0.5") from None


def _cmd_reproduce(args: argparse.Namespace) -> int:
    from .config import PROFILES
    from .sweep import Grid, reproduce, study_grids, torch_cuda_count

    given = _given(args, skip=GRID_FIELDS)
    noise = _noise_levels(args.noise)
    if args.study:
        grids = study_grids()
    else:
        params = dict(PROFILES["quick"]) if args.quick else {}
        if args.command == "demo" and "results" not in given:  # the newcomer's run: its own, git-ignored folder
            from .paths import results_dir

            params["results"] = str(results_dir() / "demo")  # so the committed results/ stay as they are
        grids = [Grid(params=params, seeds=list(range(args.seeds)))]
    for grid in grids:
        grid.params.update(given)
        grid.noise = noise or grid.noise
        grid.models = [m.strip() for m in args.models.split(",")] if args.models else grid.models
        grid.configs()  # every config of the grid valid before anything runs
    if args.submitit:
        return _submit([c for g in grids for c in g.configs()], args)
    jobs = args.jobs or max(1, torch_cuda_count())  # one run per GPU; one at a time without GPUs
    start = time.perf_counter()
    try:
        counts = reproduce(grids, inline=args.quick or args.study or args.inline, jobs=jobs)
    except KeyboardInterrupt:
        print("interrupted: finished runs are kept; run the same command again to go on")
        return 130
    print(f"report: {grids[0].configs()[0].results_dir() / 'README.md'}")
    print(f"{fmt.plural(counts['total'], 'run')}: {counts['skipped']} already finished, {counts['ran']} run now "
          f"({counts['diverged']} diverged), {counts['failed']} failed, in {time.perf_counter() - start:.0f} s")
    for line in counts["failures"]:
        print(f"  failed: {line}", file=sys.stderr)
    return 1 if counts["failed"] else 0


def _submit(configs, args: argparse.Namespace) -> int:
    """The grid as cluster jobs through submitit (lambdalib.cluster): one job per unfinished run."""
    from . import cluster

    params = {"slurm_partition": args.slurm_partition} if args.slurm_partition else {}
    executor = cluster.make_executor(args.submitit, cluster=args.cluster, **params)
    jobs = cluster.submit(configs, executor)
    print(f"{fmt.plural(len(configs), 'run')}: {len(configs) - len(jobs)} already finished, {len(jobs)} submitted "
          f"({executor.cluster}; job files and logs in {args.submitit})")
    for job in jobs:
        print(f"  job {job.job_id}")
    print("when they are done: lambdalib report" + (f" --results {args.results}" if args.results else ""))
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    from . import report

    readme = report.build(args.results or None, out=args.out or None, quiet=args.quiet)
    print(f"report: {readme}")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from .export import export

    out = export(args.run, out=args.out, allow_unfinished=args.allow_unfinished)
    print(f"exported: {out} (model.safetensors, config.json, README.md)")
    print(f"share it: huggingface_hub.upload_folder(repo_id='<user>/<repo>', folder_path='{out}')")
    return 0


def _cmd_attention(args: argparse.Namespace) -> int:
    from . import attention

    if args.trained:  # figure 7 from our own run records
        unused = [flag for flag, value in (("--image", args.image), ("--target", args.target),
                                           ("--allow-random", args.allow_random)) if value]
        if unused:
            raise ValueError(f"{', '.join(unused)}: not with --trained, which explains each model's top-1 class on "
                             "both.png and three Imagenette validation images")
        labels = args.models or list(attention.TRAINED_LABELS)
        noise = _noise_levels(args.noise) or list(attention.TRAINED_NOISE)
        result = attention.trained_figure(args.results, out=args.out, labels=labels, noise=noise, method=args.method)
        print(result.caption)
        print(f"\nfigure: {result.path}\ncaption: {result.caption_path}\ntable: {result.table_path} "
              f"(markdown: {result.table_markdown_path})")
        return 0
    if args.results or args.noise:
        raise ValueError("--results and --noise go with --trained (the figure of our own trained models)")
    target = int(args.target) if args.target and args.target.isdigit() else args.target
    result = attention.attention_figure(args.models, image=args.image, method=args.method, out=args.out,
                                        allow_random=args.allow_random, target=target)
    if result is None:
        return 1
    print(result.caption)
    print(f"figure: {result.path}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = argparse.ArgumentParser(prog="lambdalib", description="Lambda-ResNets on Imagenette with noisy labels: "
                                                                  "models, training, report.")
    parser.add_argument("--version", action="version", version=f"lambdalib {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("models", help="the report's ten models and LR18_L3x4(rpe): parameters, FLOPs, lambda sites")
    p.add_argument("--img-size", type=int, default=160)
    p.add_argument("--num-classes", type=int, default=10)
    p.set_defaults(func=_cmd_models)

    p = sub.add_parser("train", help="train one model on one noise level; re-running the same command resumes it",
                       description="Train one model (report label like 'LR18_L2(rpe)' or a timm name) and write its "
                                   "run record under results/runs/. Works under `torchrun --nproc_per_node N` (DDP).")
    _add_config_flags(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("data", help="class counts, realised noise rates and a sample grid (clean vs noisy labels)")
    p.add_argument("--data", default="embedded", help="'embedded', 'imagenette2-160', a folder or an archive")
    p.add_argument("--noise", type=float, default=0.25, help="noise level of the sample grid")
    p.add_argument("--samples", type=int, default=16)
    p.add_argument("--out", help="the sample grid: a .png path or a folder (default results/figures/)")
    p.set_defaults(func=_cmd_data)

    for name, summary in (("reproduce", "the report's grid: 10 models x noise 0/5/25/50 %%, then the report"),
                          ("demo", "the main job on the embedded data: `reproduce --quick` into results/demo/")):
        p = sub.add_parser(name, help=summary, description="Runs every (model, noise, seed) of the grid that has no "
                           "finished record (through the numbered notebooks with papermill, or in-process with "
                           "--inline / --quick / --study), then rebuilds the report. Every training flag sets that "
                           "field for the whole grid.")
        p.add_argument("--quick", action="store_true", default=name == "demo",
                       help="profile 'quick': all ten models, every noise level, 3 epochs at 64 px on 24/16 images "
                            "per class of the embedded data (minutes on a laptop CPU; a smoke test, not results)")
        p.add_argument("--study", action="store_true",
                       help="profile 'study': the committed study (results/), the runs that test the report's "
                            "claims; README.md says what it runs and costs")
        p.add_argument("--inline", action="store_true", help="train in this process, not through the notebooks")
        p.add_argument("--models", help="comma-separated labels (default: all ten)")
        p.add_argument("--noise", help="comma-separated fractions (default 0,0.05,0.25,0.5)")
        p.add_argument("--seeds", type=int, default=1, help="seeds 0..N-1 per cell")
        p.add_argument("--jobs", type=int, help="runs at once, each in its own process on its own GPU "
                                                "(default: one per GPU; 1 without GPUs)")
        p.add_argument("--submitit", metavar="FOLDER",
                       help="submit each unfinished run as a cluster job through submitit (pip install "
                            "submitit), its job files and logs in FOLDER, instead of running here")
        p.add_argument("--cluster", choices=("slurm", "local"),
                       help="with --submitit: 'slurm', or 'local' processes (default: SLURM where sbatch exists)")
        p.add_argument("--slurm-partition", help="with --submitit: the SLURM partition")
        _add_config_flags(p.add_argument_group("training flags (every run of the grid)"), skip=GRID_FIELDS)
        p.set_defaults(func=_cmd_reproduce)

    p = sub.add_parser("attention", help="FullGrad (or another CAM) maps of timm models and our checkpoints",
                       description="The report's figure 7: one map per model on a dog-and-cat image. Models are timm "
                                   "names (pretrained weights needed), report labels, run folders or best.pt files. "
                                   "With --trained: the figure from our own trained models instead (one best.pt per "
                                   "model and noise level from the run records, on both.png and three Imagenette "
                                   "validation images), written to figures/attention_trained.png with its table "
                                   "tables/attention_trained.csv (concentration, mass on the dog and cat boxes).")
    p.add_argument("models", nargs="*", help="default: resnet18 resnet50 lambda_resnet26t lambda_resnet50ts; with "
                                             "--trained, report labels (default: R18 LR18_L2(rpe) LR18_L2(lc))")
    p.add_argument("--image", help="image path (default: data/images/both.png)")
    p.add_argument("--method", default="fullgrad", help="fullgrad, gradcam, gradcam++, scorecam, ...")
    p.add_argument("--target", help="class index or name (default: each model's top prediction)")
    p.add_argument("--out", help="a .png path or a folder for the figure (default: "
                                 "results/figures/attention_<method>.png); with --trained, the folder for figures/ "
                                 "and tables/ (default: the results folder)")
    p.add_argument("--allow-random", action="store_true",
                   help="show models without weights, titled 'random init (no weights available)'")
    p.add_argument("--trained", action="store_true",
                   help="figure 7 from our own trained models (results/runs/*/best.pt) and its table")
    p.add_argument("--results", help="with --trained: the results folder holding runs/ (default: results/)")
    p.add_argument("--noise", help="with --trained: comma-separated noise levels (default 0,0.5)")
    p.set_defaults(func=_cmd_attention)

    p = sub.add_parser("export", help="a run's best weights as model.safetensors + timm config + model card",
                       description="Write best.pt's weights as model.safetensors, timm's config.json and a README.md "
                                   "model card (every number from the run record or lambdalib's preprocessing) into "
                                   "<run folder>/export/: the folder timm.create_model(..., pretrained=True) and the "
                                   "Hugging Face hub expect.")
    p.add_argument("run", help="run folder (results/runs/<run id>) or its best.pt")
    p.add_argument("--out", help="output folder (default: <run folder>/export/)")
    p.add_argument("--allow-unfinished", action="store_true",
                   help="export a running or interrupted run's best weights so far")
    p.set_defaults(func=_cmd_export)

    p = sub.add_parser("report", help="rebuild results/ tables, figures and README from the run records")
    p.add_argument("--results", help="results folder holding runs/ (default: the repository's results/)")
    p.add_argument("--out", help="where README.md, tables/ and figures/ go (default: the results folder)")
    p.add_argument("--quiet", action="store_true", help="do not list every file written")
    p.set_defaults(func=_cmd_report)
    return parser


def main(argv: list[str] | None = None) -> int:
    from . import log_to_stdout

    log_to_stdout()
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 0
    try:
        return args.func(args)
    except (ValueError, OSError) as err:  # user errors (and a full disk, ...): one clear line, no traceback
        print(f"lambdalib {args.command}: error: {err}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as err:  # torch's "out of memory" / "not enough memory" (CPU and CUDA)
        if not isinstance(err, MemoryError) and "memory" not in str(err).lower():
            raise
        from .files import first_line

        print(f"lambdalib {args.command}: error: out of memory ({first_line(err, 200)}); use a smaller --img-size or "
              "--batch-size (a finished epoch is kept: the same command resumes)", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
