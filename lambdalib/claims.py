"""The report's claims checked against the run records: each claim is a row of CLAIMS (the report's words, what
is tested, its effect of interest δ, its measure); measures turn records into comparisons, and one evaluator
(`judge`) gives every claim its verdict by RULES. `claims_markdown(runs.collect("results"))` is the README's section.
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from types import SimpleNamespace as Context
from typing import Callable

import numpy as np
import pandas as pd
from scipy import stats

from . import curves, fmt, paths, registry
from .config import PROFILES, RunConfig
from .curves import finite_or_nan, is_finite
from .imagenette import CHANCE_LOSS, FULL_IMAGENETTE
from .runs import diverged_epoch, finished_runs, t_half_width

REPRODUCED, NOT_REPRODUCED, CONTRADICTED = "reproduced", "not reproduced", "contradicted"
CANNOT_TELL, NO_RUNS = "cannot tell", "no runs for this here"
ALPHA = 0.05  # family-wise error of a claim: each of its k intervals is at 1 − ALPHA/k (Bonferroni)
UNIFORM_ENTROPY = 0.95  # a FullGrad map of normalised entropy >= 0.95 is nearly uniform
HARDWARE = ("device", "world_size")  # environment keys a time comparison pairs on (device.environment records them)
OVERFIT_DELTA = 0.1  # nats: the report prints no curve values; a rise under 0.1 nat is no visible "over-fit"
TWICE = math.log(2)  # "very unstable", "sharp", "greatly": a factor 2 (ratios are compared as logs)
OURS_PREFIX, ATTENTION_IMPL = "ours", "attn naive"  # the attention sweep's lambda layers and attention with n x n map
REPORT_GPU = "a P100"
SCHEDULE = ("the schedule makes it so: every run ends a cosine cycle (last-epoch lr ≤ "
            f"{curves.CYCLE_END_LR:.0%} of its peak), which favours the last epoch by construction")
EXPLOSION = (f"grad norm > {curves.GRAD_BURST_FACTOR:g} × the run's median or train loss > "
             f"{curves.TRAIN_RISE_FACTOR:g} × its lowest")  # a gradient explosion, in the words of rows 2 and 11
RULES = (
    "Comparisons pair runs by seed inside one set-up and noise level (same data order; a ResNet and its Lambda twin "
    "also share the initial weights of every common layer); ratios are compared as logs. Each claim states its "
    "effect of interest δ: the report's own effect for the same model and noise where published.csv has one in the "
    "claim's direction (else its smallest such effect), or a typed-in value with the reason. With the interval "
    "[lo, hi] oriented so that the report's effect is positive, a comparison is *reproduced* when lo ≥ δ, "
    "*contradicted* when hi < 0 (the opposite effect is shown), *not reproduced* when otherwise hi < δ (the report's "
    "effect is excluded), and *cannot tell* when lo < δ ≤ hi, with fewer than 2 seed pairs, or when the statistic "
    "is degenerate (at its floor in every run of both arms, zero variance, or fixed by the schedule); a claim of "
    "similarity is reproduced inside ±δ, contradicted entirely outside it. **Multiplicity:** a claim with k "
    f"comparisons uses Bonferroni intervals, each at confidence 1 − {ALPHA:g}/k (Student-t over seed pairs, "
    f"Clopper-Pearson for shares), so that all k hold together with at least {100 * (1 - ALPHA):g} %; the claim "
    "takes the verdict they agree on (contradicted and not reproduced together: not reproduced), else *cannot tell*.")


def interval(values, confidence: float = 1 - ALPHA, kind: str = "t") -> tuple[float, float, float]:
    """(mean, low, high) of the finite `values`: kind "t" a two-sided Student-t interval (NaN bounds below two
    values), "share" (0/1 values) a Clopper-Pearson interval, "exact" a measurement without spread."""
    xs = np.asarray([float(v) for v in values if is_finite(v)])
    if not len(xs):
        return math.nan, math.nan, math.nan
    mean, a, k, n = float(xs.mean()), 1 - confidence, int(xs.sum()), len(xs)
    if kind == "exact":
        return mean, float(xs.min()), float(xs.max())
    if kind == "share":
        return (mean, float(stats.beta.ppf(a / 2, k, n - k + 1)) if k else 0.0,
                float(stats.beta.ppf(1 - a / 2, k + 1, n - k)) if k < n else 1.0)
    if n < 2:
        return mean, math.nan, math.nan
    half = t_half_width(float(xs.std(ddof=1)), n, confidence)
    return mean, mean - half, mean + half


@dataclass(frozen=True)
class Paired:
    """A statistic compared by seed: each kept label against partner(label), or alone (against 0)."""

    partner: Callable[[str], str | None] = lambda label: None
    keep: Callable[[str], bool] = lambda label: True
    value: Callable[[pd.Series], float] | None = None  # a run's statistic (default: the row's summary column)
    ratio: bool = False
    across_noise: bool = False  # a run's statistic at the set-up's highest noise minus at noise 0
    alone: bool = False
    hardware: bool = False  # pair only runs whose recorded environment (HARDWARE) is equal
    report_layers: bool = False  # compare the Lambda-ResNets built with the report's lambda layers, not with ours


@dataclass(frozen=True)
class Row:
    """One claim: the report's words, what is tested, its effect of interest, how it is measured."""

    key: str
    words: str  # quoted exactly, with where in the report
    tested: str  # which runs, which statistic
    effect: str  # the effect of interest δ, in words
    measure: Paired | Callable | None  # (ctx, row) -> (comparisons, note, spikes); None: nothing here measures it
    sign: int = 1  # +1: the report says the statistic is above 0 (1 for ratios); -1: below; 0: similar (within ±δ)
    delta: float | None = None  # a typed-in δ (statistic units, logs for ratios); None: from published.csv
    column: str = ""  # the summary and published.csv column of the statistic
    scale: str = "nats"  # how values read: nats, ratio, share, mass
    floor: float | None = None  # the statistic's floor: degenerate when every run of both arms sits on it
    schedule_bound: bool = False  # reads the last epoch: degenerate when every run ends a cosine cycle
    why_none: str = ""  # said when there are no runs for this


@dataclass
class Comparison:
    """`what` at `where`: per-seed values (logs for ratios), δ (> 0) and its source; `judge` fills in the rest."""

    what: str
    where: str
    values: tuple[float, ...]
    delta: float
    delta_from: str
    seeds: tuple = ()
    ids: tuple[str, ...] = ()
    degenerate: str = ""
    note: str = ""
    kind: str = "t"  # t, share or exact (see `interval`)
    mean: float = math.nan
    low: float = math.nan
    high: float = math.nan
    verdict: str = ""
    reason: str = ""


@dataclass
class Claim:
    row: Row
    comparisons: list[Comparison]
    verdict: str
    reason: str
    note: str = ""
    spikes: list[dict] = field(default_factory=list)  # find_spikes' dicts with the run's label, where and seed


def _baseline(label: str) -> str | None:
    """'LR18_L2(rpe)' -> 'R18'; '' for one of the report's ResNets; None for a model that is not the report's."""
    base = registry.split_label(label)[0]
    return next((s.baseline or "" for s in registry.SPECS.values() if s.label == base), None)


def _done(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished runs, with `where_setup` (the preset; the set-up when two share one), by set-up, noise, model, seed."""
    done = finished_runs(runs).copy() if runs is not None and "status" in runs else pd.DataFrame()
    if done.empty:
        return done
    presets = done.drop_duplicates("setup").set_index("setup")["preset"]
    shared = set(presets[presets.duplicated(keep=False)].index)
    done["where_setup"] = [s if s in shared else str(presets[s]) for s in done["setup"]]
    done["setup_rank"] = done["setup"].map(list(dict.fromkeys(done["setup"])).index)
    return done.sort_values(["setup_rank", "noise", "model_order", "seed"], kind="stable").reset_index(drop=True)


def _report_stat(pub: pd.DataFrame, row: Row, label: str, noise: float) -> float:
    """The row's statistic computed on the report's published numbers for `label` (and its partner) at `noise`."""
    p, table = row.measure, pub.drop_duplicates(["label", "noise"]).set_index(["label", "noise"])[row.column]

    def arm(lab):  # the report's number for the model, whoever's lambda layer ours has
        lab = registry.split_label(lab)[0]
        return finite_or_nan(table.get((lab, noise))) - (finite_or_nan(table.get((lab, 0.0))) if p.across_noise else 0)
    mine, theirs = arm(label), 0.0 if p.alone else arm(p.partner(label))
    if p.ratio:
        return math.log(mine / theirs) if mine > 0 and theirs > 0 else math.nan
    return mine - theirs


def _delta(pub: pd.DataFrame, row: Row, label: str, noise: float) -> tuple[float, str]:
    """(δ, its source): the report's own effect for this model and noise if in the claim's direction, else its
    smallest in that direction."""
    if row.delta is not None:
        return row.delta, "typed in"
    p, direction = row.measure, row.sign or 1
    own = direction * _report_stat(pub, row, label, noise)
    own = abs(own) if row.sign == 0 else own
    if own > 0:
        return own, f"the report's, {label} at {fmt.noise(noise)}"
    published = [direction * _report_stat(pub, row, lab, n) for lab, n in zip(pub["label"], pub["noise"])
                 if p.keep(lab) and (p.alone or p.partner(lab)) and (n > 0 or not p.across_noise)]
    shown = [abs(x) for x in published if is_finite(x) and (x > 0 or row.sign == 0 and x)]
    told = "none" if math.isnan(own) else _show(row, direction * own)
    return ((min(shown), f"the smallest in the report; its own for {label} at {fmt.noise(noise)}: {told}") if shown
            else (math.nan, "the report shows no effect in its claim's direction"))


def _paired(ctx: Context, row: Row) -> tuple[list[Comparison], str, list[dict]]:
    """Per set-up and noise (or noise 0 → the highest), each kept label against its partner over shared seeds."""
    p, done = row.measure, ctx.done
    value = p.value or (lambda r: finite_or_nan(r.get(row.column)))
    runs = {(r["setup"], r["label"], int(r["seed"]), float(r["noise"])): r for _, r in done.iterrows()}
    highs = done.groupby("setup")["noise"].max() if len(done) else {}
    units = {}  # (where, label) -> {seed: (noise, value, the runs it comes from)}
    for (setup, label, seed, noise), run in runs.items():
        clean = runs.get((setup, label, seed, 0.0))
        if not p.across_noise:
            units.setdefault((f"{run['where_setup']}, {fmt.noise(noise)} noise", label), {})[seed] = (
                noise, value(run), (run,))
        elif clean is not None and 0 < noise == highs[setup]:
            units.setdefault((f"{run['where_setup']}, noise 0 → {fmt.noise(noise)}", label), {})[seed] = (
                noise, value(run) - value(clean), (clean, run))
    comparisons = []
    for (where, label), mine in units.items():
        other = None if p.alone else p.partner(label)
        theirs = {seed: (0, 0.0, ()) for seed in mine} if p.alone else units.get((where, other), {})
        ours = registry.split_label(label)[1] == registry.LAMBDA_LAYERS[0]
        if not p.keep(label) or ours == p.report_layers or not set(mine) & set(theirs):
            continue
        pairs, left_out = [], []
        for seed in [s for s in mine if s in theirs]:
            (noise, a, rs), (_, b, qs) = mine[seed], theirs[seed]
            hw = [tuple(str(r.get(f"env_{k}")) for k in HARDWARE) for r in (rs[-1], *qs[-1:])]
            if p.hardware and hw[0] != hw[-1]:
                left_out.append(f"seed {seed} ({label} on {hw[0][0]}, {other} on {hw[-1][0]})")
            elif is_finite(a) and is_finite(b) and (not p.ratio or (a > 0 and b > 0)):
                pairs.append((seed, a, b, rs + qs))
        used = [r for *_, rs in pairs for r in rs]
        best = sum(int(r["best_val_loss_epoch"] == r["epochs_done"]) for r in used)
        cycle = row.schedule_bound and used and all(curves.ends_cycle(r["_history"]) for r in used)
        floor = row.floor is not None and pairs and all(v == row.floor for _, a, b, _ in pairs
                                                          for v in (a, b)[:2 - p.alone])
        comparisons.append(Comparison(
            label if p.alone else f"{label} {'/' if p.ratio else '−'} {other}", where,
            tuple(math.log(a / b) if p.ratio else a - b for _, a, b, _ in pairs),
            *_delta(ctx.pub, row, label, next(iter(mine.values()))[0]), seeds=tuple(s for s, *_ in pairs),
            ids=tuple(dict.fromkeys(r["experiment_id"] for r in used)),
            degenerate="; ".join(([f"degenerate: at its floor ({row.floor:g}) in every run of both arms"] if floor
                                  else []) + ([SCHEDULE] if cycle else [])),
            note="; ".join(([f"last epoch the best in {best} of {len(used)} runs"] if row.schedule_bound else [])
                           + ([f"left out, on other hardware: {'; '.join(left_out)}"] if left_out else []))))
    return comparisons, "", []


def _explosions(ctx: Context, row: Row) -> tuple[list[Comparison], str, list[dict]]:
    """Row 2: share of runs with more than two lambda layers with a gradient explosion; 11: share of LR34_L3 runs with
    one; 14: share of those that overfit before exploding."""
    groups, spikes, unreliable, censored = {}, [], 0, {}
    for _, run in ctx.done.iterrows():
        where, history = f"{run['where_setup']}, {fmt.noise(run['noise'])} noise", run["_history"]
        mine = [dict(s, label=run["label"], seed=int(run["seed"]), where=where) for s in curves.find_spikes(history)]
        spikes, unreliable = spikes + mine, unreliable + (not curves.batch_stats_reliable(history))
        first = next((s["epoch"] for s in mine if s["cause"] == curves.SPIKE_EXPLOSION), None)
        spec = registry.SPECS.get(run["model"])
        group = None  # the share of row 2 or 11 the run counts in (none for row 14)
        if row.key == "2" and spec is not None and spec.position and spec.lambda_layers > 2:
            group = ("every set-up", "runs with more than two lambda layers")
        elif row.key == "11" and run["label"].startswith("LR34_L3"):
            group = (run["where_setup"], run["label"])
        stopped = diverged_epoch(run)
        if group and first is None and stopped is not None and stopped < curves.LATE_EPOCH:
            # our divergence rule ended it before "several epochs" without an explosion: it cannot say either way
            censored.setdefault(group, []).append(f"{run['label']} s{int(run['seed'])} ({where}) at epoch {stopped:g}")
            groups.setdefault(group, [])
        elif group:
            groups.setdefault(group, []).append((run, first is not None))
        elif row.key == "14" and first is not None:
            before = curves.val_loss_rise([r for r in history if r["epoch"] < first])
            groups.setdefault((run["where_setup"], "exploding runs"), []).append((run, before >= OVERFIT_DELTA))
    exploded = ctx.pub[ctx.pub["label"].str.startswith("LR34_L3") & ctx.pub["best_val_loss"].notna()]
    share = float((exploded["best_val_loss"] > curves.SPIKE_FACTOR * CHANCE_LOSS).mean())
    delta = share if row.delta is None else row.delta
    left_out = f"stopped by the divergence rule before epoch {curves.LATE_EPOCH} without an explosion, so left out"
    comparisons = [Comparison(what, where, tuple(float(hit) for _, hit in runs), delta,
                              "typed in" if row.delta else "the report's share", kind="share",
                              seeds=tuple(int(r["seed"]) for r, _ in runs),
                              ids=tuple(dict.fromkeys(r["experiment_id"] for r, _ in runs)),
                              degenerate="" if runs else f"every run {left_out}",
                              note=f"{left_out}: {', '.join(censored[where, what])}" if (where, what) in censored
                              else "")
                   for (where, what), runs in groups.items()]
    causes = ", ".join(f"{n} {cause}" for cause, n in Counter(s["cause"] for s in spikes).items())
    seen = f"{fmt.plural(len(spikes), 'val-loss spike')} in {fmt.plural(len(ctx.done), 'run')}"
    stopped_early = sum(map(len, censored.values()))
    seen = (f"{fmt.plural(stopped_early, 'run')} {left_out}; " if stopped_early else "") + seen
    return comparisons, (seen + (f" ({causes})" * bool(spikes)) + (
        "; val_loss_batch_stats at or above chance while the eval-mode val loss is well below it in "
        f"{fmt.plural(unreliable, 'run')}: not used to classify spikes" if unreliable else "")), spikes


def _memory(ctx: Context, row: Row) -> tuple[list[Comparison], str, list[dict]]:
    """Row 1: peak memory of each lambda layer / attention with its n x n map, at the largest side both ran."""
    inside = ctx.sweep.resolve().is_relative_to(ctx.results_dir.resolve())
    shown = ctx.sweep.resolve().relative_to(ctx.results_dir.resolve()).as_posix() if inside else ctx.sweep.name
    sweep = pd.read_csv(ctx.sweep) if ctx.sweep.is_file() else None
    if sweep is None or not {"impl", "side", "status", "peak_MB"} <= set(sweep.columns):
        return [], f"no attention sweep here ({shown} is missing or lacks impl, side, status, peak_MB)", []
    ok = sweep[(sweep["status"] == "ok") & pd.to_numeric(sweep["peak_MB"], errors="coerce").notna()]
    ours = ok[ok["impl"].astype(str).str.startswith(OURS_PREFIX)]
    sides = sorted(set(ours["side"]) & set(ok[ok["impl"] == ATTENTION_IMPL]["side"]))
    if not sides:
        return [], f"{shown} has no map side where both a lambda layer and '{ATTENTION_IMPL}' ran", []
    at = ok[ok["side"] == sides[-1]].drop_duplicates("impl").set_index("impl")["peak_MB"].astype(float)
    return ([Comparison(f"{impl} / {ATTENTION_IMPL}", f"map side {sides[-1]}", (math.log(mb / at[ATTENTION_IMPL]),),
                        row.delta, "typed in", ids=(shown,), kind="exact")
             for impl, mb in at.items() if str(impl).startswith(OURS_PREFIX)],
            f"peak MB at side {sides[-1]}: " + ", ".join(f"{impl} {mb:.0f}" for impl, mb in at.items()), [])


def _figure7(ctx: Context, row: Row) -> tuple[list[Comparison], str, list[dict]]:
    """Rows 16, 17: FullGrad mass of our checkpoints' maps on the dog and cat boxes of both.png."""
    path = ctx.results_dir / "tables" / "attention_trained.csv"
    if not path.is_file():
        return [], "no tables/attention_trained.csv here (`lambdalib attention --trained` writes it)", []
    maps = pd.read_csv(path).dropna(subset=["mass_dog", "mass_cat"])
    other = "mass_dog" if row.column == "mass_cat" else "mass_cat"
    lambdas = row.column == "mass_dog"  # the report: its ResNet looks at the cat, its Lambda-ResNet at the dog
    uniform = (f"the maps are nearly uniform (normalised entropy ≥ {UNIFORM_ENTROPY} in all), so a box's mass is "
               "about its share of the image")
    return [Comparison(label, f"both.png, {', '.join(map(fmt.noise, g['noise']))} noise (one checkpoint each)",
                       tuple(g[row.column] - g[other]), row.delta, "typed in", ids=tuple(g["run_id"]),
                       degenerate=uniform if (g["normalised_entropy"] >= UNIFORM_ENTROPY).all() else "")
            for label, g in maps.groupby("model", sort=False)
            if (bool(_baseline(label)) if lambdas else _baseline(label) == "")], \
        "ours: our own checkpoints (named in tables/attention_trained.csv), not timm's pretrained models", []


def _oscillation(run: pd.Series) -> float:
    return curves.late_oscillation(run["_history"])


def _epoch_time(run: pd.Series) -> float:
    return finite_or_nan(run["train_time_s"]) / (finite_or_nan(run["epochs_done"]) or math.nan)


OWN = "the report's own for the same model and noise"
CLAIMS: tuple[Row, ...] = (  # the report's words in its order; sign, δ and measure as Row says
    Row("1", "\"This method greatly reduce the memory usage by abstracting the keys K and values V\" (§1)",
        "peak memory of each of our lambda layers / attention with its n × n map (formula 1), at the largest map "
        "side of benchmarks/attention_sweep.csv where both ran (exact)", "×0.5, typed in (\"greatly\"; the report "
        "measures nothing)", _memory, sign=-1, delta=TWICE, scale="ratio"),
    Row("2", "\"any LambdaResNet with more than two lambda layers would lead to gradient explosion after several "
        "epochs in this small dataset, which is indicated by the Nan validation loss\" (§2)", "share of the runs of "
        "models with more than two lambda layers (every set-up and noise level together) with a gradient explosion: "
        f"a val-loss spike (a non-finite loss included) with a {EXPLOSION}", "1/2, typed in (\"any ... would\": more "
        "often than not)", _explosions, delta=0.5, scale="share",
        why_none="no runs of a model with more than two lambda layers here"),
    Row("3", "\"the R18 has similar loss curves for four different noisy labels and converges to similar loss\" "
        "(§3.1)", "R18's best val loss at the set-up's highest noise − at noise 0", f"±{OWN} (Table 1)",
        Paired(keep=lambda lab: lab == "R18", across_noise=True, alone=True), sign=0, column="best_val_loss"),
    Row("4", "\"R34 is more sensitive to noisy labels, as the ResNet34(0%) has the best train and val loss out of "
        "all the other ResNet34 counterparts\" (§3.1)", "rise of best train loss from noise 0 to the set-up's "
        "highest noise, R34 − R18", f"{OWN} (Table 1)", column="best_train_loss",
        measure=Paired(partner=lambda lab: "R18", keep=lambda lab: lab == "R34", across_noise=True)),
    Row("5", "\"LambdaResNet over-fitted after about 10 epochs of validation\" (§3.2.1, figures 3, 4)", "last − "
        "lowest val loss of a run (0 when the last epoch is the best), Lambda − ResNet of its depth",
        f"{OVERFIT_DELTA} nats, typed in (the report prints no curve values)", delta=OVERFIT_DELTA, floor=0.0,
        measure=Paired(partner=_baseline, value=lambda r: curves.val_loss_rise(r["_history"])), schedule_bound=True),
    Row("6", "\"For LambdaResNet18, its training and validation losses are slightly hinted at compared to the "
        "original ResNet18\" (§3.2.1)", "best val loss, LR18 (rpe) − R18", f"{OWN} (Tables 1, 2)", sign=-1,
        measure=Paired(partner=_baseline, keep=lambda lab: lab.startswith("LR18") and "(rpe)" in lab),
        column="best_val_loss"),
    Row("7", "\"the eval loss curve is very unstable, with a sharp irregular oscillation after about 10 epochs\" "
        "(§3.2.1)", f"mean \\|epoch-to-epoch change of val loss\\| after epoch {curves.LATE_EPOCH}, LR18 / R18",
        "×2, typed in (\"very unstable\", \"sharp\"; the report prints no curve values)", delta=TWICE, scale="ratio",
        measure=Paired(partner=_baseline, keep=lambda lab: lab.startswith("LR18"), ratio=True, value=_oscillation)),
    Row("8", "\"An extral hour is needed for training a Lambda ResNet\" (§3.2.1)", "seconds per epoch (validation "
        f"included), Lambda / ResNet of its depth, pairing only runs on equal recorded hardware ({', '.join(HARDWARE)}"
        " of summary.json's environment)", f"{OWN} (Tables 1-5; its ResNets ran on the authors' computers, its "
        f"Lambda-ResNets on {REPORT_GPU})", Paired(partner=_baseline, ratio=True, hardware=True, value=_epoch_time),
        column="training_time_s", scale="ratio"),
    Row("9", "\"it is sensitive to the noisy labels, shown in table2 and 3\" (§3.2.1)", "rise of best train loss "
        "from noise 0 to the set-up's highest noise, Lambda − ResNet of its depth", f"{OWN} (Tables 1-5)",
        Paired(partner=_baseline, across_noise=True), column="best_train_loss"),
    Row("10", "\"For LambdaResNet34, the training processes are even more unstable\" (§3.2.1)", "mean \\|epoch-to-"
        f"epoch change of val loss\\| after epoch {curves.LATE_EPOCH}, LR34 / LR18 of the same lambda layer",
        "×2, typed in, as for 7", Paired(partner=lambda lab: lab.replace("LR34", "LR18"),
                                         keep=lambda lab: lab.startswith("LR34"), ratio=True, value=_oscillation),
        delta=TWICE, scale="ratio"),
    Row("11", "\"Especially for the LR34_L3, several losses in table3 shows that the this model has experienced "
        "gradient explosion\" (§3.2.1)", f"share of LR34_L3 runs with a val-loss spike (> {curves.SPIKE_FACTOR:g} × "
        f"its lowest so far) from a gradient explosion ({EXPLOSION})", "the report's share: its LR34_L3 rows with best "
        f"val loss > {curves.SPIKE_FACTOR:g} ln 10 (Table 5)", _explosions, scale="share",
        why_none="no LR34_L3 runs here"),
    Row("12", "\"We found that the LambdaResNet does have to improve in training loss\" (§5)", "best train loss, "
        "Lambda − ResNet of its depth", f"{OWN} (Tables 1-5)", Paired(partner=_baseline), sign=-1,
        column="best_train_loss"),
    Row("12b", "the same words, with the report's own lambda layers", "best train loss, Lambda − ResNet of its depth, "
        "Lambda-ResNets built with lucidrains' lambda-networks (the layer the report used: rpe over the whole map, lc "
        "at its r=23) or with ours drawing the position table from N(0, 1) as lucidrains does (the init alone); "
        "the label's [suffix] names the layer", f"{OWN} (Tables 1-5)", Paired(partner=_baseline, report_layers=True),
        sign=-1, column="best_train_loss", why_none="no runs with another lambda layer here (RunConfig.lambda_layer)"),
    Row("13", "\"the LC models have improved in terms of training loss compare to the RPE and baseline models\" "
        "(§3.2.2)", "best train loss, lc − rpe of the same depth and stage", f"{OWN} (Tables 2, 4)", sign=-1,
        measure=Paired(partner=lambda lab: lab.replace("(lc)", "(rpe)"), keep=lambda lab: "(lc)" in lab),
        column="best_train_loss"),
    Row("14", "\"gradient explosion since it happens along with overfitting\" (§3.2.2)", "share of runs with a "
        f"gradient explosion whose val loss had risen ≥ {OVERFIT_DELTA} nats above its lowest before it", "1/2, "
        "typed in (more often than not)", _explosions, delta=0.5, scale="share",
        why_none="no run here has a gradient explosion"),
    Row("15", "\"We assume that the LambdaResNet needs a large dataset like ImageNet to prevent overfit and also "
        "gradient explosion\" (§3.2.2)", "runs at several data-set sizes up to ImageNet's", "—", None,
        why_none="every run here trains on a subset of Imagenette; none at a larger scale"),
    Row("16", "\"the R18 model7(a) has shifted attention to the cat rather than focus on the dog\" (§4, figure 7)",
        "FullGrad mass on the cat's box − on the dog's box of both.png, our ResNet checkpoints "
        "(tables/attention_trained.csv)", "0.1 of the map's mass, typed in (the report shows a picture)", _figure7,
        delta=0.1, column="mass_cat", scale="mass"),
    Row("17", "\"whereas LR26, its focus on the major part of the dog as well as its body\" (§4, figure 7)",
        "FullGrad mass on the dog's box − on the cat's box of both.png, our Lambda-ResNet checkpoints",
        "0.1 of the map's mass, typed in", _figure7, delta=0.1, column="mass_dog", scale="mass"),
    Row("18", "\"indicate that the model learns how to model long-range interactions between a query and a "
        "structured set of context elements\" (§4)", "—", "—", None, why_none="nothing here measures long-range "
        "interactions: a FullGrad map (tables/attention_trained.csv) shows where a model looks, not what interacts"),
)
# what the committed study's scale (PROFILES["study"]: 1,600 images, 20 epochs, 64 px) can decide of each claim
SCALE_DECIDES = {
    "1": "all of it: the layer's own memory, measured up to the sweep's largest map",
    "2": "whether four lambda layers explode within 20 epochs on 1,600 images; not after a longer schedule",
    "3": "R18's noise 0 → 50 % gap on 1,600 images (the report's is on 9,469)",
    "4": "nothing: no R34 runs (a 34-layer run costs about twice an 18-layer one)",
    "5": "a rise after the minimum within 20 epochs (the last is not best by construction); the report's \"after 10 "
         "epochs\" is about 59 of ours in images seen",
    "6": "the sign and size of the paired gap at both presets; not the report's absolute losses",
    "7": "epoch-to-epoch swings over epochs 11-20 on 700 validation images (noisier than the report's 3,925)",
    "8": "the relative cost of an epoch on one CPU in bf16; not hours on a P100",
    "9": "the noise effect at 50 %, Lambda against ResNet; not at 5 or 25 %",
    "10": "nothing: no 34-layer runs", "11": "nothing: no LR34_L3 runs",
    "12": "the gap after 500 steps at lr 1e-5 (the report: about 5,000) and at lr 1e-3",
    "12b": "whether the report's own layer, or its N(0, 1) init alone, opens the gap in the same 500 steps; a gap that "
           "needs ten times the steps would be missed",
    "13": "lc (scope 5) against global rpe on an 8×8 map, our layer",
    "14": "only what explosions occur here", "15": "nothing: one data-set size", "18": "nothing",
    "16": "maps of our 64 px checkpoints; the report's are ImageNet-pretrained timm models", "17": "as for 16",
}
RECIPE = Row("recipe", "Table 1 shows: the ResNets' best val loss is 2.233 to 2.348 at lr 1e-5, chance being ln 10 = "
             f"{CHANCE_LOSS:.3f}", "best val loss − ln 10 of our ResNets under preset report", f"near chance: within ±"
             f"{curves.CHANCE_MARGIN:g} ln 10", Paired(keep=lambda lab: _baseline(lab) == "", alone=True,
                                                      value=lambda r: finite_or_nan(r["best_val_loss"]) - CHANCE_LOSS),
             sign=0, delta=curves.CHANCE_MARGIN * CHANCE_LOSS)


def _decide(row: Row, c: Comparison, confidence: float) -> None:
    """One comparison's verdict from its interval at `confidence`, oriented so the report's effect is positive."""
    (c.mean, c.low, c.high), n, t = interval(c.values, confidence, c.kind), len(c.values), c.kind == "t"
    c.reason = (c.degenerate or (f"{n} seed pair{'s' * (n != 1)}: no interval" if n < 1 + t else "")
                or (f"degenerate: zero variance (every seed pair gives {_show(row, c.values[0])})"
                    if t and np.ptp(c.values) == 0 else "") or ("" if math.isfinite(c.delta) else c.delta_from))
    lo, hi, delta = (c.low, c.high, c.delta) if row.sign >= 0 else (-c.high, -c.low, c.delta)
    if row.sign == 0:
        c.verdict = REPRODUCED if -delta <= lo and hi <= delta else CONTRADICTED if lo > delta or hi < -delta else ""
    else:
        c.verdict = REPRODUCED if lo >= delta else CONTRADICTED if hi < 0 else NOT_REPRODUCED if hi < delta else ""
    if c.reason or not c.verdict:
        c.verdict, c.reason = CANNOT_TELL, c.reason or "the interval holds δ and smaller effects"


def judge(row: Row, comparisons: list[Comparison], note: str = "") -> Claim:
    """The one evaluator: each of k comparisons decided on its Bonferroni interval (1 − ALPHA/k), then combined."""
    for c in comparisons:
        _decide(row, c, 1 - ALPHA / len(comparisons))
    said, k = Counter(c.verdict for c in comparisons), len(comparisons)
    counts = ", ".join(f"{n} {verdict}" for verdict, n in said.items())
    shown = {REPRODUCED: "at least δ shown", NOT_REPRODUCED: "the report's effect excluded",
             CONTRADICTED: f"{'a difference beyond ±δ' if row.sign == 0 else 'the opposite effect'} shown"}
    if not comparisons:
        verdict, reason = NO_RUNS, row.why_none or note or "none of the runs it compares"
    elif (len(said) == 1 and CANNOT_TELL not in said) or set(said) == {NOT_REPRODUCED, CONTRADICTED}:
        verdict = comparisons[0].verdict if len(said) == 1 else NOT_REPRODUCED
        reason = f"{shown[verdict]} in {k} of {k} comparison{'s' * (k > 1)}" + (f" ({counts})" * (len(said) > 1))
    elif len(said) == 1:
        verdict, reason = CANNOT_TELL, "; ".join(dict.fromkeys(x for c in comparisons for x in c.reason.split("; ")))
    else:
        verdict, reason = CANNOT_TELL, f"no common verdict: {counts}"
    return Claim(row, comparisons, verdict, reason, note)


def evaluate_claims(runs: pd.DataFrame, attention_sweep: Path | str | None = None,
                    results_dir: Path | str | None = None) -> list[Claim]:
    """Every row of CLAIMS judged against `runs` (runs.collect's frame; any subset), the attention sweep (default
    results_dir/benchmarks/attention_sweep.csv) and tables/attention_trained.csv of results_dir (default: the runs')."""
    ctx, claims = _context(runs, attention_sweep, results_dir), []
    for row in CLAIMS:
        measure = _paired if isinstance(row.measure, Paired) else row.measure or (lambda ctx, row: ([], "", []))
        comparisons, note, spikes = measure(ctx, row)
        claims.append(replace(judge(row, comparisons, note), spikes=spikes))
    return claims


def recipe(runs: pd.DataFrame) -> Claim:
    """The report's recipe (Adam, lr 1e-5) left its ResNets near chance: are ours (preset report) too?"""
    ctx = _context(runs, None, None)
    done = ctx.done[ctx.done["preset"] == "report"] if len(ctx.done) else ctx.done
    return judge(RECIPE, _paired(Context(**{**vars(ctx), "done": done}), RECIPE)[0])


def _context(runs, attention_sweep, results_dir) -> Context:
    """What the measures read: finished runs (`_done`), published.csv, the results folder, the attention sweep."""
    parents = {Path(p).parent.parent for p in runs["_path"]} if runs is not None and "_path" in runs else set()
    results_dir = Path(results_dir or (parents.pop() if len(parents) == 1 else paths.results_dir()))
    sweep = Path(attention_sweep) if attention_sweep is not None else results_dir / "benchmarks" / "attention_sweep.csv"
    return Context(done=_done(runs), pub=registry.published(), results_dir=results_dir, sweep=sweep)


def _show(row: Row, value: float, signed: bool = True) -> str:
    if not is_finite(value):
        return fmt.MISSING
    if row.scale == "ratio":
        return f"×{math.exp(value):.2f}"
    value = round(value, 3 if row.scale == "nats" else 2) + 0.0  # no "−0.000"
    text = fmt.number(value, signed=signed) if row.scale == "nats" else f"{value:{'+' if signed else ''}.2f}"
    return text.replace("-", "−")


def _effect_text(row: Row, c: Comparison) -> str:
    if not c.values:
        return "no value"
    if c.kind == "share":
        return f"{int(sum(c.values))}/{len(c.values)} [{c.low:.2f}, {c.high:.2f}]"
    spread = f" [{_show(row, c.low)}, {_show(row, c.high)}]" if c.low != c.high and is_finite(c.low) else ""
    return _show(row, c.mean) + spread + ("" if c.kind == "exact" else f" (n={len(c.values)})")


def _evidence(claim: Claim) -> str:
    """The table cell: each comparison with its effect, δ in the statistic's units (± for similarity), verdict."""
    row, lines = claim.row, []
    for c in claim.comparisons:
        delta = _show(row, c.delta if row.sign >= 0 else -c.delta, signed=row.sign < 0 and row.scale != "ratio")
        lines.append(f"{c.where}: {c.what} {_effect_text(row, c)}"
                     + (f", δ {'±' * (row.sign == 0)}{delta}" if is_finite(c.delta) else "") + f" → {c.verdict}")
    return "<br>".join(lines + ([claim.note] if claim.note else [])) or NO_RUNS


def _details(claim: Claim) -> list[str]:
    out = []
    for c in claim.comparisons:
        values = ", ".join(f"{f's{s} ' if c.seeds else ''}{_show(claim.row, v)}"
                           for s, v in zip(c.seeds or [""] * len(c.values), c.values))
        out.append(f"{c.where}, {c.what}: {_effect_text(claim.row, c)} → {c.verdict}"
                   + (f" ({c.reason})" if c.reason else "") + (f"; δ: {c.delta_from}" if is_finite(c.delta) else "")
                   + (f"; values {values}" if values else "") + (f"; {c.note}" if c.note else "")
                   + "".join(f"; `{i}`" for i in c.ids))
    return out + ["{label}, {where}, seed {seed}, epoch {epoch}: val loss {val_loss:.3f} (×{factor:.1f} its best so "
                  "far); batch statistics {batch_stats:.3f}; grad norm max {grad_norm_max:.3f} (median "
                  "{grad_median:.3f}); train loss {train_loss:.3f} → {cause}".format(**s) for s in claim.spikes]


def _cell(text: str) -> str:
    return str(text).replace("\n", " ").replace(" | ", " \\| ")


def claims_markdown(runs: pd.DataFrame, attention_sweep: Path | str | None = None,
                    results_dir: Path | str | None = None) -> str:
    """The README's "## Claims" section: RULES, the table, the numbers behind it, the recipe, the scale (no
    absolute paths)."""
    claims, mine = evaluate_claims(runs, attention_sweep, results_dir), recipe(runs)
    done, scale = _done(runs), PROFILES["study"]  # SCALE_DECIDES speaks of the committed study's scale only
    study = bool(len(done)) and all((done[k] == scale.get(k, 0)).all() for k in
                                    ("data", "epochs", "img_size", "train_per_class", "val_per_class"))
    lines = ["## Claims\n", f"Each claim of the report, checked against the run records above (`lambdalib.claims`). "
             f"{RULES}\n", "| # | The report's words | Tested here | Effect of interest δ | "
             + "What this study's scale can decide | " * study + "Our evidence | Verdict |",
             "|---" + "|:---" * (5 + study) + "|"]
    lines += [f"| {c.row.key} | {_cell(c.row.words)} | {_cell(c.row.tested)} | {_cell(c.row.effect)} | "
              + f"{_cell(SCALE_DECIDES.get(c.row.key, '—'))} | " * study
              + f"{_cell(_evidence(c))} | **{c.verdict}** ({_cell(c.reason)}) |" for c in claims]
    lines.append("\n### How each claim is measured, and the numbers behind it\n")
    for c in claims:
        lines += [f"- **{c.row.key}.** {c.row.tested}; δ: {c.row.effect}. **{c.verdict}** ({c.reason})."]
        lines += [f"  - {d}" for d in _details(c)]
    reading = {REPRODUCED: "consistent: like the report's, our ResNets stay near chance under its recipe",
               CONTRADICTED: "not consistent: ours train clearly below chance where the report's did not",
               CANNOT_TELL: f"cannot tell ({mine.reason})", NO_RUNS: "no runs for this here (no preset report runs)"}
    ours = "; ".join(f"{c.where}: {c.what} {_effect_text(RECIPE, c)}" for c in mine.comparisons)
    lines += ["", "### The report's recipe\n", f"Not a claim of the report, but what its {RECIPE.words}. Ours, "
              f"{RECIPE.tested} ({RECIPE.effect}): {ours or 'none'} → **{reading[mine.verdict]}**.\n"]
    return "\n".join(lines + [scale_paragraph(runs)])


def scale_paragraph(runs: pd.DataFrame) -> str:
    """What this scale can and cannot say about the report's setting (ours read from the records' set-ups)."""
    done, defaults = _done(runs), {f.name: f.default for f in fields(RunConfig)}
    full, setups = FULL_IMAGENETTE[0] * defaults["epochs"], done.drop_duplicates("setup") if len(done) else done
    seen = [int(e) * int(n) for e, n in zip(setups.get("epochs", []), setups.get("train_images", [])) if is_finite(n)]
    ours = "; ".join(f"{s.scale.rstrip('.')} ({(done['setup'] == s.setup).sum()} runs)" for s in setups.itertuples())
    longest = (f" That is {full / max(seen):.0f}× the training images ours see, and the report's \"after about "
               f"{curves.LATE_EPOCH} epochs\" comes after {curves.LATE_EPOCH * FULL_IMAGENETTE[0]:,} of them, against "
               f"{max(seen):,} in all of our longest runs.") if seen else ""
    return (f"**What this scale can and cannot say.** Ours: {ours or 'no finished runs here'}. The report's setting: "
            f"full Imagenette ({FULL_IMAGENETTE[0]:,} train / {FULL_IMAGENETTE[1]:,} val images) for an epoch count "
            f"and image size it does not state (lambdalib's defaults: {defaults['epochs']} epochs, {full:,} training "
            f"images seen, at {defaults['img_size']} px), its Lambda-ResNets on {REPORT_GPU} and its ResNets on the "
            f"authors' own computers.{longest} What transfers: the direction of paired differences between a ResNet "
            "and its Lambda twin under the same data order and initial weights, whether a val-loss spike comes from "
            "BatchNorm's running statistics or from the gradients, and the relative cost of a step on one machine. "
            "What does not: absolute losses on the full data set, effects that need the longer schedule or larger "
            f"images, and wall-clock hours on {REPORT_GPU}.\n")
