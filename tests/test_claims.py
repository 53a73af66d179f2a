"""The report's claims are checked from run records: the one evaluator reaches every verdict (reproduced, not
reproduced, contradicted, cannot tell with its reason, no runs) on hand-made comparisons and on synthetic records
written with lambdalib's own writers (no training); intervals are Bonferroni-adjusted as stated; degenerate
statistics (floor, zero variance, schedule), unequal hardware, unreliable batch statistics and missing evidence
say so; and the committed README's Claims section is what the committed records give."""
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lambdalib import claims, curves, files, record, registry
from lambdalib import runs as run_records
from lambdalib.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
EPOCHS = 12  # > LATE_EPOCH + 1, so the late oscillation exists
SEEDS = (0, 1, 2)
KEYS = [str(k) for k in range(1, 13)] + ["12b"] + [str(k) for k in range(13, 19)]  # the report's order
R, NR, C, CT = claims.REPRODUCED, claims.NOT_REPRODUCED, claims.CONTRADICTED, claims.CANNOT_TELL


def write_run(results: Path, model: str, noise: float, seed: int, *, train: list[float], val: list[float],
              epoch_time: float = 1.0, grad: list[float] | None = None, batch_stats: list[float] | None = None,
              lr: list[float] | None = None, preset: str = "fast", status: str = "complete",
              device: str = "CPU (test)", old_record: bool = False, lambda_layer: str = "ours",
              epochs: int | None = None, diverged_at: int | None = None, world_size: int = 1) -> Path:
    """One run record as the trainer writes it (config.json, history.csv, summary.json), from given curves.
    old_record: history.csv written without the val_loss_batch_stats column (records from before it)."""
    config = RunConfig.from_params(model=model, noise=noise, seed=seed, preset=preset, epochs=epochs or len(val),
                                   img_size=64,
                                   batch_size=64, data="embedded", results=str(results),
                                   lambda_layer=lambda_layer).resolved()
    run_dir = config.run_dir()
    files.make_dir(run_dir)
    config.save(run_dir / "config.json")
    grad, lr = grad or [2.0] * len(val), lr or [config.lr] * len(val)
    batch_stats = batch_stats or [v + 0.1 for v in val]
    history = [dict(epoch=e, lr=rate, train_loss=t, train_acc=0.5, val_loss=v, val_acc=0.5, grad_norm_mean=1.0,
                    grad_norm_max=g, epoch_time_s=epoch_time, train_images_per_s=100.0, finite=math.isfinite(v),
                    precision="fp32", loss_scale=math.nan, skipped_steps=0, val_loss_batch_stats=b)
               for e, (t, v, g, b, rate) in enumerate(zip(train, val, grad, batch_stats, lr), 1)]
    columns = [c for c in record.HISTORY_COLUMNS if not (old_record and c == "val_loss_batch_stats")]
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(record, "HISTORY_COLUMNS", columns)
        record.write_history(run_dir, [{k: row[k] for k in columns} for row in history])
    name = registry.resolve_name(model)
    record.write_summary(run_dir, record.summarize(history, status, diverged_at, dict(
        run_id=config.run_id, experiment_id=config.experiment_id, model=name, label=registry.report_label(name),
        noise=noise, preset=preset, params=1, gflops=0.1, train_images=1600, val_images=700, amp="off",
        environment=dict(device=device, world_size=world_size))))
    return run_dir


def falling(final: float, epochs: int = EPOCHS) -> list[float]:
    """A training loss falling by 0.1 an epoch to `final`."""
    return [final + 0.1 * (epochs - e) for e in range(1, epochs + 1)]


def val_curve(rise: float, amp: float, epochs: int = EPOCHS) -> list[float]:
    """Val loss: 2.5 falling to 1.9 at epoch 6, then rising by `rise` per epoch, alternating ±amp after epoch 10."""
    return [max(1.9, 2.5 - 0.1 * e) + rise * max(0, e - 6) + (amp if e % 2 else -amp) * (e > curves.LATE_EPOCH)
            for e in range(1, epochs + 1)]


# per model and seed: the study's known numbers (noise 0.5 adds 0.5 to every train loss and NOISY_VAL to the val loss)
TRAIN = {"R18": [2.0, 2.05, 2.1], "LR18_L2(rpe)": [1.0, 1.04, 1.08],  # lambda − ResNet −1.0, −1.01, −1.02
         "LR18_L2(lc)": [1.8, 1.84, 1.88],  # −0.2, −0.21, −0.22
         "R34": [2.0, 2.05, 2.1], "LR34_L3(rpe)": [2.3, 2.36, 2.42]}  # +0.3, +0.31, +0.32
RISE = {"R18": [0.0, 0.01, 0.0], "LR18_L2(rpe)": [0.1, 0.12, 0.11], "LR18_L2(lc)": [0.0, 0.01, 0.0],
        "R34": [0.0] * 3, "LR34_L3(rpe)": [0.0] * 3}
AMP = {"R18": [0.01, 0.02, 0.015], "LR18_L2(rpe)": [0.2, 0.25, 0.3], "LR18_L2(lc)": [0.01, 0.02, 0.015],
       "R34": [0.05] * 3, "LR34_L3(rpe)": [0.05] * 3}
NOISY_VAL = [0.3, 0.32, 0.34]  # every model's best val loss rises by this at noise 0.5
EPOCH_TIME = {"R18": [1.0] * 3, "LR18_L2(rpe)": [2.5, 2.52, 2.55], "LR18_L2(lc)": [1.0, 1.01, 0.99],
              "R34": [2.0] * 3, "LR34_L3(rpe)": [1.6, 1.62, 1.58]}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """R18, LR18_L2(rpe), LR18_L2(lc), R34, LR34_L3(rpe) at noise 0 and 0.5, seeds 0-2, preset fast, 12 epochs.
    LR34_L3(rpe) seed 0 (noise 0) has a gradient explosion at epoch 8, seed 1 a BatchNorm spike at epoch 9; R18
    seed 2 (noise 0.5) a spike of the weights themselves at epoch 9."""
    results = tmp_path_factory.mktemp("study") / "results"
    for model in TRAIN:
        for noise in (0.0, 0.5):
            for seed in SEEDS:
                train = falling(TRAIN[model][seed] + noise)
                val = [v + (NOISY_VAL[seed] if noise else 0.0) for v in val_curve(RISE[model][seed], AMP[model][seed])]
                grad, batch = [2.0] * EPOCHS, [v + 0.1 for v in val]
                if (model, noise, seed) == ("LR34_L3(rpe)", 0.0, 0):  # explosion: gradients and train loss go
                    val[7], grad[7], train[7], batch[7] = 50.0, 100.0, 5.0, 40.0
                if (model, noise, seed) == ("LR34_L3(rpe)", 0.0, 1):  # BN: batch statistics stay normal
                    val[8], batch[8] = 30.0, 2.05
                if (model, noise, seed) == ("R18", 0.5, 2):  # the weights: batch statistics spike too
                    val[8], batch[8] = 10.0, 9.0
                write_run(results, model, noise, seed, train=train, val=val, grad=grad, batch_stats=batch,
                          epoch_time=EPOCH_TIME[model][seed])
    return results


@pytest.fixture(scope="module")
def runs(study) -> pd.DataFrame:
    return run_records.collect(study)


def by_key(found) -> dict[str, claims.Claim]:
    return {c.row.key: c for c in found}


def comparison(claim: claims.Claim, what: str, where: str) -> claims.Comparison:
    found = [c for c in claim.comparisons if c.what.startswith(what) and c.where == where]
    assert len(found) == 1, [(c.what, c.where) for c in claim.comparisons]
    return found[0]


def expected(values, k: int, kind: str = "t"):
    """Mean and Bonferroni interval (k comparisons) computed here, independently of the module."""
    xs, a = np.asarray(values, float), 0.05 / k
    if kind == "share":
        hits, n = int(xs.sum()), len(xs)
        return [hits / n, stats.beta.ppf(a / 2, hits, n - hits + 1) if hits else 0.0,
                stats.beta.ppf(1 - a / 2, hits + 1, n - hits) if hits < n else 1.0]
    half = stats.t.ppf(1 - a / 2, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs))
    return [xs.mean(), xs.mean() - half, xs.mean() + half]


def check(c: claims.Comparison, values, k: int, verdict: str, ratio: bool = False):
    values = np.log(values) if ratio else values
    assert np.allclose(c.values, values) and np.allclose([c.mean, c.low, c.high], expected(values, k))
    assert c.verdict == verdict, (c.verdict, c.reason)


# ------------------------------------------------------------------------------ the evaluator, by hand
ROW = claims.Row("x", "words", "tested", "effect", None)


def judged(*values_lists, sign=1, delta=0.5, **kw) -> claims.Claim:
    return claims.judge(replace(ROW, sign=sign), [claims.Comparison(f"c{i}", "here", tuple(v), delta, "typed in", **kw)
                                                 for i, v in enumerate(values_lists)])


def test_every_verdict_branch_of_the_evaluator():
    # lo >= δ: reproduced; hi < 0: contradicted; 0 <= hi < δ: not reproduced; lo < δ <= hi: cannot tell
    assert judged([1.0, 1.01, 1.02]).verdict == R
    assert judged([-1.0, -1.01, -1.02], sign=-1).verdict == R  # the report's effect is a decrease
    # and every other branch for a decrease: the interval is turned round, not read as it comes
    assert judged([1.0, 1.01, 1.02], sign=-1).verdict == C
    assert judged([-0.1, -0.11, -0.12], sign=-1).verdict == NR
    assert judged([-0.3, -0.7, -0.5], sign=-1).verdict == CT
    assert judged([-1.0, -1.01, -1.02]).verdict == C
    assert judged([0.1, 0.11, 0.12]).verdict == NR
    straddle = judged([0.3, 0.7, 0.5])
    assert straddle.verdict == CT and straddle.reason == "the interval holds δ and smaller effects"
    # cannot tell with its reason: one seed pair, zero variance, a degenerate statistic, no effect of interest
    assert judged([5.0]).reason == "1 seed pair: no interval"
    assert "zero variance" in judged([0.2, 0.2, 0.2]).reason and judged([0.2, 0.2, 0.2]).verdict == CT
    assert judged([1.0, 1.01, 1.02], degenerate="degenerate: at its floor").reason == "degenerate: at its floor"
    nothing = claims.judge(ROW, [claims.Comparison("c", "here", (1.0, 1.1), math.nan, "the report shows none")])
    assert nothing.verdict == CT and nothing.reason == "the report shows none"
    # similarity (sign 0): inside ±δ reproduced, entirely outside contradicted, else cannot tell
    assert judged([0.001, 0.002, 0.0015], sign=0, delta=0.028).verdict == R
    assert judged([0.3, 0.32, 0.34], sign=0, delta=0.028).verdict == C
    assert judged([-0.1, 0.1, 0.0], sign=0, delta=0.028).verdict == CT
    # no comparisons: no runs for this here
    assert claims.judge(replace(ROW, why_none="none here"), []).verdict == claims.NO_RUNS
    # exact measurements decide on one value; shares on Clopper-Pearson
    assert judged([0.7], kind="exact").verdict == R and judged([0.3], kind="exact").verdict == NR
    assert judged([1.0] * 20, delta=0.75, kind="share").verdict == R  # 20 of 20: lo = 0.025^(1/20) = 0.83
    assert judged([0.0] * 20, delta=0.75, kind="share").verdict == NR


def test_comparisons_combine_by_agreement_with_bonferroni_intervals():
    both = judged([1.0, 1.01, 1.02], [0.9, 1.0, 1.1])
    assert both.verdict == R and both.reason == "at least δ shown in 2 of 2 comparisons"
    for c in both.comparisons:  # each interval at 1 − 0.05/2
        assert np.allclose([c.mean, c.low, c.high], expected(c.values, 2))
    assert not np.allclose(both.comparisons[1].low, expected([0.9, 1.0, 1.1], 1)[1])  # not the plain 95 %
    excluded = judged([0.1, 0.11, 0.12], [-1.0, -1.01, -1.02])
    assert excluded.verdict == NR and excluded.reason == ("the report's effect excluded in 2 of 2 comparisons "
                                                          "(1 not reproduced, 1 contradicted)")
    assert judged([-1.0, -1.01, -1.02], [-2.0, -2.01, -2.02]).verdict == C
    disagree = judged([1.0, 1.01, 1.02], [0.1, 0.11, 0.12])
    assert disagree.verdict == CT and disagree.reason == "no common verdict: 1 reproduced, 1 not reproduced"
    unsure = judged([5.0], [0.2, 0.2, 0.2])
    assert unsure.verdict == CT and unsure.reason.startswith("1 seed pair: no interval; degenerate: zero variance")


def test_interval_kinds():
    mean, low, high = claims.interval([-0.2, -0.21, -0.21])
    assert np.allclose([mean, low, high], expected([-0.2, -0.21, -0.21], 1))
    assert math.isnan(claims.interval([1.0])[1]) and claims.interval([1.0, math.nan, None, 3.0])[0] == 2.0
    assert np.allclose(claims.interval([0, 0, 0], kind="share"), [0, 0, 1 - 0.025 ** (1 / 3)])
    assert claims.interval([0.4], kind="exact") == (0.4, 0.4, 0.4)


# ------------------------------------------------------------------------------ statistics of one run
def _history(val, train=None, grad=None, batch=None):
    n = len(val)
    train, grad, batch = train or [1.0] * n, grad or [2.0] * n, batch or [math.nan] * n
    return [dict(epoch=e, val_loss=v, train_loss=t, grad_norm_max=g, val_loss_batch_stats=b)
            for e, (v, t, g, b) in enumerate(zip(val, train, grad, batch), 1)]


def test_run_statistics_on_hand_made_histories():
    history = [dict(epoch=e, val_loss=v) for e, v in enumerate([3.0, 2.0, 1.5, 2.5, math.nan, 2.0], 1)]
    assert curves.val_loss_rise(history) == pytest.approx(0.5)  # last finite 2.0 − lowest 1.5
    assert curves.late_oscillation(history, after=2) == pytest.approx((0.5 + 1.0) / 2)  # |1.5−2|, |2.5−1.5|
    assert math.isnan(curves.late_oscillation(history, after=10)) and math.isnan(curves.val_loss_rise([]))
    cosine = [dict(lr=0.5 * (1 + math.cos(math.pi * e / 15))) for e in range(15)]
    assert curves.ends_cycle(cosine) and not curves.ends_cycle(cosine[:10]) and not curves.ends_cycle([dict(lr=1)] * 3)


def test_spikes_are_told_apart_both_ways():
    calm = [2.3, 2.1, 2.0, 2.0]
    assert curves.find_spikes(_history(calm, batch=calm)) == []

    def causes(**kw):
        return [(s["epoch"], s["cause"]) for s in curves.find_spikes(_history(**kw))]
    bn = curves.find_spikes(_history([2.3, 2.1, 400.0, 2.0], batch=[2.4, 2.2, 2.3, 2.1]))
    assert [(s["epoch"], s["cause"]) for s in bn] == [(3, curves.SPIKE_BN)]
    assert bn[0]["factor"] == pytest.approx(400 / 2.1)
    assert causes(val=[2.3, 2.1, 400.0, 2.0], grad=[2.0, 2.0, 100.0, 2.0], batch=[2.4, 2.2, 2.3, 2.1]) == [
        (3, curves.SPIKE_EXPLOSION)]  # gradients 50x their median
    assert causes(val=[2.3, 2.1, 9.0, 2.0], train=[2.0, 1.0, 1.6, 1.0], batch=[2.4, 2.2, 2.3, 2.1]) == [
        (3, curves.SPIKE_EXPLOSION)]  # the train loss rises with it
    assert causes(val=[2.3, math.nan], train=[2.0, math.nan]) == [(2, curves.SPIKE_EXPLOSION)]
    assert causes(val=[2.3, 2.1, 9.0], batch=[2.4, 2.2, 8.0]) == [(3, curves.SPIKE_WEIGHTS)]
    assert causes(val=[2.3, 2.1, 9.0]) == [(3, curves.SPIKE_UNCLASSIFIED)]  # an old record: no batch statistics
    assert curves.find_spikes(_history([50.0, 2.1, 2.1 * curves.SPIKE_FACTOR])) == []  # not above the factor


def test_batch_statistics_at_chance_do_not_classify_spikes():
    # eval-mode val loss well below chance, the batch-statistics column never below it (class-sorted batches)
    val, batch = [2.0, 1.2, 1.0, 9.0, 1.0], [2.4, 2.35, 2.4, 2.3, 2.4]
    assert not curves.batch_stats_reliable(_history(val, batch=batch))
    assert [s["cause"] for s in curves.find_spikes(_history(val, batch=batch))] == [curves.SPIKE_UNRELIABLE]
    near_chance = [2.3, 2.25, 2.2, 9.0, 2.2]  # a run near chance: the column is not contradicted, it classifies
    assert curves.batch_stats_reliable(_history(near_chance, batch=batch))
    assert [s["cause"] for s in curves.find_spikes(_history(near_chance, batch=batch))] == [curves.SPIKE_BN]


# ------------------------------------------------------------------------------ claims from records
def test_train_loss_claim_against_the_reports_own_gap(runs):
    claim, k = by_key(claims.evaluate_claims(runs))["12"], 6
    published = registry.published().set_index(["label", "noise"])["best_train_loss"]
    for noise, where in ((0.0, "fast, 0 % noise"), (0.5, "fast, 50 % noise")):
        rpe = comparison(claim, "LR18_L2(rpe) − R18", where)
        check(rpe, np.subtract(TRAIN["LR18_L2(rpe)"], TRAIN["R18"]), k, R)
        assert rpe.delta == pytest.approx(published["R18", noise] - published["LR18_L2(rpe)", noise])
        check(comparison(claim, "LR18_L2(lc) − R18", where), np.subtract(TRAIN["LR18_L2(lc)"], TRAIN["R18"]), k, NR)
        check(comparison(claim, "LR34_L3(rpe) − R34", where), np.subtract(TRAIN["LR34_L3(rpe)"], TRAIN["R34"]), k, C)
        assert rpe.seeds == SEEDS
    assert claim.verdict == CT
    assert claim.reason == "no common verdict: 2 reproduced, 2 not reproduced, 2 contradicted"
    # LR34_L3(rpe) is not in published.csv: its δ is the smallest of the report's published gaps
    gaps = [published["R18" if "18" in lab else "R34", n] - published[lab, n] for lab, n in published.index
            if lab.startswith("LR") and not math.isnan(published[lab, n])]
    assert comparison(claim, "LR34_L3(rpe)", "fast, 0 % noise").delta == pytest.approx(min(gaps))

    def verdict(labels):
        return by_key(claims.evaluate_claims(runs[runs["label"].isin(labels)]))["12"].verdict
    assert verdict(["R18", "LR18_L2(rpe)"]) == R and verdict(["R18", "LR18_L2(lc)"]) == NR
    assert verdict(["R34", "LR34_L3(rpe)"]) == C
    assert verdict(["R18", "LR18_L2(lc)", "R34", "LR34_L3(rpe)"]) == NR  # not reproduced with contradicted
    one_seed = by_key(claims.evaluate_claims(runs[runs["seed"] == 0]))["12"]
    assert one_seed.verdict == CT and one_seed.reason == "1 seed pair: no interval"
    alone = by_key(claims.evaluate_claims(runs[runs["label"] == "LR18_L2(rpe)"]))["12"]  # no ResNet: no comparison
    assert alone.comparisons == [] and alone.verdict == claims.NO_RUNS


def test_the_reports_own_lambda_layers_are_judged_in_their_own_row(tmp_path):
    """Runs of one Lambda-ResNet with another lambda layer share the ResNet's set-up, carry the layer in their
    label and are compared with it in row 12b (δ: the report's own gap for the model), never in row 12."""
    train = {("R18", "ours"): 2.3, ("LR18_L2(rpe)", "ours"): 2.28, ("LR18_L2(rpe)", "lucidrains"): 1.8,
             ("LR18_L2(lc)", "ours-n01"): 2.0}
    for (model, layer), final in train.items():
        for seed in SEEDS:
            write_run(tmp_path, model, 0.0, seed, train=falling(final + 0.01 * seed * (layer != "ours")),
                      val=falling(2.2), preset="report", lambda_layer=layer)
    found = run_records.collect(tmp_path)
    assert set(found["label"]) == {"R18", "LR18_L2(rpe)", "LR18_L2(rpe)[lucidrains]", "LR18_L2(lc)[ours-n01]"}
    assert found["setup"].nunique() == 1
    judged_here = by_key(claims.evaluate_claims(found))
    assert [c.what for c in judged_here["12"].comparisons] == ["LR18_L2(rpe) − R18"]
    row = judged_here["12b"]
    assert [c.what for c in row.comparisons] == ["LR18_L2(rpe)[lucidrains] − R18", "LR18_L2(lc)[ours-n01] − R18"]
    published = registry.published().set_index(["label", "noise"])["best_train_loss"]
    lucid = comparison(row, "LR18_L2(rpe)[lucidrains]", "report, 0 % noise")
    assert lucid.delta == pytest.approx(published["R18", 0.0] - published["LR18_L2(rpe)", 0.0])
    check(lucid, [-0.5, -0.49, -0.48], 2, NR)  # lower than R18, but by less than the report's 0.83: excluded
    assert not judged_here["13"].comparisons  # lc − rpe with our layer only: no [ours-n01] rpe runs here


def test_more_than_two_lambda_layers_explode_is_a_share_of_their_runs(tmp_path, runs):
    """Row 2: the runs of a model with more than two lambda layers, every set-up together; a run counts when a
    val-loss spike (a NaN one too) comes with a gradient burst or a train-loss rise."""
    assert by_key(claims.evaluate_claims(runs))["2"].verdict == claims.NO_RUNS  # none in the study above

    def row2(explode: set) -> claims.Claim:
        for preset in ("report", "fast"):
            for seed in SEEDS:
                val, train, grad = val_curve(0.0, 0.0), falling(1.0), [2.0] * EPOCHS
                if (preset, seed) in explode:
                    val[7], train[7], grad[7] = math.nan, math.nan, 500.0
                write_run(tmp_path / str(sorted(explode)), "LR18_L3x4(rpe)", 0.0, seed, train=train, val=val,
                          grad=grad, preset=preset, status="diverged" if (preset, seed) in explode else "complete")
        return by_key(claims.evaluate_claims(run_records.collect(tmp_path / str(sorted(explode)))))["2"]

    calm = row2(set())
    (c,) = calm.comparisons
    assert (c.what, c.where, c.values) == ("runs with more than two lambda layers", "every set-up", (0.0,) * 6)
    assert c.high == pytest.approx(expected([0.0] * 6, 1, "share")[2]) and calm.verdict == NR  # 0/6: at most 0.46
    every = row2({(p, s) for p in ("report", "fast") for s in SEEDS})
    assert every.comparisons[0].values == (1.0,) * 6 and every.verdict == R  # 6/6: at least 0.54
    assert row2({("report", 0), ("fast", 1)}).verdict == CT


def test_a_run_our_divergence_rule_stopped_early_without_an_explosion_is_left_out_of_row_2(tmp_path):
    """Row 2 is about explosions "after several epochs": a run our own rule ended at epoch 2 on a calm-gradient spike
    (BatchNorm's running statistics, as in the study) cannot say either way, so it is named and not counted."""
    for preset in ("report", "fast"):
        for seed in SEEDS:
            early = (preset, seed) == ("report", 1)
            val = val_curve(0.0, 0.0)
            calm = [v + 0.1 for v in val]
            if early:
                val = [val[0], 40.0]
            write_run(tmp_path, "LR18_L3x4(rpe)", 0.0, seed, train=falling(1.0)[:len(val)], val=val,
                      batch_stats=calm[:len(val)], preset=preset, epochs=EPOCHS,
                      status="diverged" if early else "complete", diverged_at=2 if early else None)
    row = by_key(claims.evaluate_claims(run_records.collect(tmp_path)))["2"]
    (c,) = row.comparisons
    assert c.values == (0.0,) * 5 and c.high == pytest.approx(expected([0.0] * 5, 1, "share")[2])
    assert c.verdict == CT == row.verdict  # 0/5 reaches 0.52: δ 0.5 is not excluded (0/6 would have, wrongly)
    assert c.note.endswith("left out: LR18_L3x4(rpe) s1 (report, 0 % noise) at epoch 2")
    assert row.note.startswith(f"1 run stopped by the divergence rule before epoch {curves.LATE_EPOCH} without an "
                               "explosion, so left out; ")


def test_what_the_study_scale_decides_is_said_only_of_the_studys_scale(tmp_path, runs):
    header = "What this study's scale can decide"
    assert header not in claims.claims_markdown(runs)  # 12 epochs: not the committed study's scale
    for model in ("R18", "LR18_L2(rpe)"):
        for seed in SEEDS:  # PROFILES["study"]: the embedded set, 64 px, 20 epochs
            write_run(tmp_path, model, 0.0, seed, train=falling(1.0, 20), val=val_curve(0.0, 0.0, 20))
    text = claims.claims_markdown(run_records.collect(tmp_path))
    table = [line for line in text.splitlines() if line.startswith("| ")]
    assert header in table[0] and all(len(line.split(" | ")) == 7 for line in table[2:])
    assert claims.SCALE_DECIDES["4"] in next(line for line in table if line.startswith("| 4 |"))


def test_report_own_effect_against_its_claim_falls_back_to_its_smallest(runs):
    claim = by_key(claims.evaluate_claims(runs))["13"]  # lc − rpe train loss; the report's LR18 0 % goes the other way
    published = registry.published().set_index(["label", "noise"])["best_train_loss"]
    own = published["LR18_L2(lc)", 0.0] - published["LR18_L2(rpe)", 0.0]
    assert own > 0  # against the claim that lc is lower
    drops = [published[f"LR{d}_L2(rpe)", n] - published[f"LR{d}_L2(lc)", n]
             for d in (18, 34) for n in (0, 0.05, 0.25, 0.5)]
    c = comparison(claim, "LR18_L2(lc) − LR18_L2(rpe)", "fast, 0 % noise")
    assert c.delta == pytest.approx(min(x for x in drops if x > 0)) and "the smallest in the report" in c.delta_from
    check(c, np.subtract(TRAIN["LR18_L2(lc)"], TRAIN["LR18_L2(rpe)"]), 2, C)  # ours: lc higher, the opposite


def test_degenerate_statistics_say_why(runs, tmp_path):
    found = by_key(claims.evaluate_claims(runs))
    # overfitting: LR34_L3(rpe) and R34 both end on their lowest val loss: the statistic sits at its floor 0
    floor = comparison(found["5"], "LR34_L3(rpe) − R34", "fast, 0 % noise")
    assert floor.verdict == CT and floor.reason == "degenerate: at its floor (0) in every run of both arms"
    check(comparison(found["5"], "LR18_L2(rpe) − R18", "fast, 0 % noise"),
          [curves.val_loss_rise([dict(val_loss=v) for v in val_curve(RISE["LR18_L2(rpe)"][s], AMP["LR18_L2(rpe)"][s])])
           - curves.val_loss_rise([dict(val_loss=v) for v in val_curve(RISE["R18"][s], AMP["R18"][s])])
           for s in SEEDS], 6, R)
    # identical late curves (LR18_L2(lc) and R18): the ratio is 1 in every seed, no spread to judge
    same = comparison(found["7"], "LR18_L2(lc) / R18", "fast, 0 % noise")
    assert same.verdict == CT and same.reason == "degenerate: zero variance (every seed pair gives ×1.00)"
    # a schedule that ends a cosine cycle at lr ~ 0 favours the last epoch: cannot tell, whatever the values
    cosine = [1e-3 * 0.5 * (1 + math.cos(math.pi * e / EPOCHS)) for e in range(EPOCHS)]
    for seed in SEEDS:  # R18 falls to its last epoch; LR18_L2(rpe) rises after epoch 6 and ends above its lowest
        write_run(tmp_path, "R18", 0.0, seed, train=falling(1.0), val=falling(1.5 + 0.01 * seed), lr=cosine)
        write_run(tmp_path, "LR18_L2(rpe)", 0.0, seed, train=falling(1.0), val=val_curve(0.1 + 0.01 * seed, 0.0),
                  lr=cosine)
    claim = by_key(claims.evaluate_claims(run_records.collect(tmp_path)))["5"]
    assert claim.verdict == CT and claim.reason.startswith("the schedule makes it so: every run ends a cosine cycle")
    assert "last epoch the best in 3 of 6 runs" in claim.comparisons[0].note


def test_noise_claims(runs):
    found = by_key(claims.evaluate_claims(runs))
    # R18 "similar" at every noise level: ours rises by NOISY_VAL, far beyond the report's own 0.028
    similar = comparison(found["3"], "R18", "fast, noise 0 → 50 %")
    check(similar, NOISY_VAL, 1, C)
    assert similar.delta == pytest.approx(2.348 - 2.320) and found["3"].verdict == C
    # the train loss rises by 0.5 with noise for every model: the lambda's extra rise is ~0, the report's is excluded
    assert {c.verdict for c in found["9"].comparisons} <= {NR, CT} and found["9"].comparisons
    assert len(comparison(found["9"], "LR18_L2(rpe) − R18", "fast, noise 0 → 50 %").ids) == 4
    clean = by_key(claims.evaluate_claims(runs[runs["noise"] == 0]))
    assert clean["9"].verdict == claims.NO_RUNS and clean["3"].verdict == claims.NO_RUNS


def test_time_claim_pairs_only_equal_hardware(runs, tmp_path):
    claim, k = by_key(claims.evaluate_claims(runs))["8"], 6
    published = registry.published().set_index(["label", "noise"])["training_time_s"]
    rpe = comparison(claim, "LR18_L2(rpe) / R18", "fast, 0 % noise")
    check(rpe, np.divide(EPOCH_TIME["LR18_L2(rpe)"], EPOCH_TIME["R18"]), k, R, ratio=True)
    assert rpe.delta == pytest.approx(math.log(published["LR18_L2(rpe)", 0.0] / published["R18", 0.0]))
    check(comparison(claim, "LR18_L2(lc) / R18", "fast, 0 % noise"),
          np.divide(EPOCH_TIME["LR18_L2(lc)"], EPOCH_TIME["R18"]), k, NR, ratio=True)
    check(comparison(claim, "LR34_L3(rpe) / R34", "fast, 0 % noise"),
          np.divide(EPOCH_TIME["LR34_L3(rpe)"], EPOCH_TIME["R34"]), k, C, ratio=True)
    # one pair ran on other hardware (one thread beside another job vs two threads alone): left out, and said so
    for model, time in (("R18", 1.0), ("LR18_L2(rpe)", 2.5)):
        for seed in SEEDS:
            device = "CPU (x86_64, 1 threads)" if (model, seed) == ("LR18_L2(rpe)", 0) else "CPU (x86_64, 2 threads)"
            write_run(tmp_path, model, 0.0, seed, train=falling(1.0), val=val_curve(0, 0),
                      epoch_time=time + 0.01 * seed, device=device)
    mixed = by_key(claims.evaluate_claims(run_records.collect(tmp_path)))["8"].comparisons[0]
    assert mixed.seeds == (1, 2) and mixed.note == ("left out, on other hardware: seed 0 (LR18_L2(rpe) on CPU (x86_64, "
                                                    "1 threads), R18 on CPU (x86_64, 2 threads))")
    # the same device, but one run of the pair in two processes: not the same hardware either
    for model, time in (("R18", 1.0), ("LR18_L2(rpe)", 2.5)):
        for seed in SEEDS:
            write_run(tmp_path / "ddp", model, 0.0, seed, train=falling(1.0), val=val_curve(0, 0),
                      epoch_time=time + 0.01 * seed, world_size=2 if (model, seed) == ("R18", 1) else 1)
    ddp = by_key(claims.evaluate_claims(run_records.collect(tmp_path / "ddp")))["8"].comparisons[0]
    assert ddp.seeds == (0, 2) and "seed 1" in ddp.note


def test_explosion_claims_classify_and_count(runs):
    found = by_key(claims.evaluate_claims(runs))
    claim = found["11"]
    causes = {(s["label"], s["where"], s["seed"], s["epoch"]): s["cause"] for s in claim.spikes}
    assert causes == {("LR34_L3(rpe)", "fast, 0 % noise", 0, 8): curves.SPIKE_EXPLOSION,
                      ("LR34_L3(rpe)", "fast, 0 % noise", 1, 9): curves.SPIKE_BN,
                      ("R18", "fast, 50 % noise", 2, 9): curves.SPIKE_WEIGHTS}
    share = comparison(claim, "LR34_L3(rpe)", "fast")  # 1 of its 6 runs explodes; the report: 3 of 4 rows
    assert share.values == (1.0, 0.0, 0.0, 0.0, 0.0, 0.0) and share.delta == 0.75
    assert np.allclose([share.mean, share.low, share.high], expected(share.values, 1, "share"))
    assert claim.verdict == NR and claim.note.startswith("3 val-loss spikes in 30 runs")
    overfit = comparison(found["14"], "exploding runs", "fast")  # its val loss had not risen before: 0 of 1
    assert overfit.values == (0.0,) and found["14"].verdict == CT
    none = by_key(claims.evaluate_claims(runs[runs["label"] == "R18"]))
    assert none["11"].verdict == none["14"].verdict == claims.NO_RUNS and none["11"].reason == "no LR34_L3 runs here"


def test_unreliable_batch_statistics_in_records(tmp_path):
    val = [2.0, 1.5, 1.2, 1.1, 9.0] + [1.0] * 7  # a spike at epoch 5, calm gradients and train loss
    write_run(tmp_path, "LR34_L3(rpe)", 0.0, 0, train=falling(1.0), val=val, batch_stats=[2.4] * EPOCHS)
    write_run(tmp_path / "old", "LR34_L3(rpe)", 0.0, 0, train=falling(1.0), val=val, old_record=True)
    claim = by_key(claims.evaluate_claims(run_records.collect(tmp_path)))["11"]
    assert [s["cause"] for s in claim.spikes] == [curves.SPIKE_UNRELIABLE]
    assert "well below it in 1 run: not used to classify spikes" in claim.note
    old = by_key(claims.evaluate_claims(run_records.collect(tmp_path / "old")))["11"]
    assert [s["cause"] for s in old.spikes] == [curves.SPIKE_UNCLASSIFIED]


def write_sweep(path: Path, ours: float, lc: float, attention: float) -> Path:
    rows = [("ours rpe", 8, "ok", 4.0), ("attn naive", 8, "ok", 4.0), ("ours rpe", 16, "ok", ours),
            ("ours lc", 16, "ok", lc), ("attn naive", 16, "ok", attention), ("sdpa", 16, "ok", 25.0),
            ("ours rpe", 32, "ok", 170.0), ("attn naive", 32, "skipped (too slow)", math.nan)]
    pd.DataFrame(rows, columns=["impl", "side", "status", "peak_MB"]).to_csv(path, index=False)
    return path


def test_memory_claim_from_the_attention_sweep(tmp_path, runs):
    def memory(ours, lc, attention):
        return by_key(claims.evaluate_claims(runs, write_sweep(tmp_path / "a.csv", ours, lc, attention)))["1"]
    found = memory(20.0, 10.0, 60.0)  # at side 16, the largest where attention ran: ×0.33 and ×0.17 <= ×0.5
    assert found.verdict == R
    assert [c.what for c in found.comparisons] == ["ours rpe / attn naive", "ours lc / attn naive"]
    assert found.comparisons[0].values == pytest.approx((math.log(20 / 60),)) and "sdpa 25" in found.note
    assert memory(40.0, 45.0, 60.0).verdict == NR  # below attention, not by half
    assert memory(70.0, 80.0, 60.0).verdict == C  # above it
    assert memory(20.0, 45.0, 60.0).verdict == CT  # the two disagree
    missing = by_key(claims.evaluate_claims(runs, tmp_path / "none.csv"))["1"]
    assert missing.verdict == claims.NO_RUNS and "none.csv is missing" in missing.reason


def test_figure7_claims_from_the_trained_maps(tmp_path):
    for seed in SEEDS:
        write_run(tmp_path, "R18", 0.0, seed, train=falling(1.0), val=val_curve(0, 0))
    records = run_records.collect(tmp_path)
    assert by_key(claims.evaluate_claims(records))["16"].verdict == claims.NO_RUNS  # no tables/attention_trained.csv
    (tmp_path / "tables").mkdir()
    rows = [("R18", 0.0, 0.26, 0.28, 0.99, "R18_x_s0")] + [
        ("LR18_L2(rpe)", noise, dog, 0.2, 0.6, f"LR_x{i}_s0") for i, (noise, dog) in enumerate(
            ((0.0, 0.6), (0.25, 0.62), (0.5, 0.61)))]
    pd.DataFrame(rows, columns=["model", "noise", "mass_dog", "mass_cat", "normalised_entropy", "run_id"]).to_csv(
        tmp_path / "tables" / "attention_trained.csv", index=False)
    found = by_key(claims.evaluate_claims(records))
    resnet = found["16"].comparisons[0]  # one checkpoint, and a nearly uniform map
    assert resnet.what == "R18" and found["16"].verdict == CT and "nearly uniform" in resnet.reason
    lam = found["17"].comparisons[0]  # three checkpoints, mass on the dog 0.4 above the cat's
    check(lam, [0.4, 0.42, 0.41], 1, R)
    assert found["18"].verdict == claims.NO_RUNS and "long-range" in found["18"].reason


def test_recipe_section_reads_near_chance_as_consistent(tmp_path):
    for seed in SEEDS:
        for results, best in ((tmp_path / "chance", 2.30), (tmp_path / "trained", 1.5)):
            val = [best + 0.01 * seed + 0.1 * (EPOCHS - e) for e in range(1, EPOCHS + 1)]
            write_run(results, "R18", 0.0, seed, train=falling(1.0), val=val, preset="report")
    near = claims.recipe(run_records.collect(tmp_path / "chance"))
    check(near.comparisons[0], [2.30 - math.log(10) + 0.01 * s for s in SEEDS], 1, R)
    assert "**consistent: like the report's, our ResNets stay near chance" in claims.claims_markdown(
        run_records.collect(tmp_path / "chance"))
    assert claims.recipe(run_records.collect(tmp_path / "trained")).verdict == C
    assert "not consistent" in claims.claims_markdown(run_records.collect(tmp_path / "trained"))
    assert all(r.key != "recipe" for r in claims.CLAIMS)  # not in the claims table


def test_no_runs_and_unfinished_runs(tmp_path):
    (tmp_path / "runs").mkdir()
    empty = run_records.collect(tmp_path)
    found = claims.evaluate_claims(empty, results_dir=tmp_path)  # no sweep, no maps there either
    assert [c.row.key for c in found] == KEYS
    assert all(c.verdict == claims.NO_RUNS for c in found)
    text = claims.claims_markdown(empty, results_dir=tmp_path)
    assert text.startswith("## Claims\n") and "no finished runs here" in text
    for model in ("R18", "LR18_L2(rpe)"):
        for seed in SEEDS:
            write_run(tmp_path, model, 0.0, seed, train=falling(1.0), val=val_curve(0, 0), status="running")
    unfinished = run_records.collect(tmp_path)
    assert len(unfinished) == 6 and by_key(claims.evaluate_claims(unfinished))["12"].comparisons == []


def test_markdown_section(runs, study):
    text = claims.claims_markdown(runs)
    assert text == claims.claims_markdown(run_records.collect(study))  # deterministic
    assert text.startswith("## Claims\n") and "**Multiplicity:**" in text and "Bonferroni" in text
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    assert [row.split(" | ")[0] for row in table] == [f"| {k}" for k in KEYS]
    assert all(row.count(" | ") == 5 for row in table)  # six columns: any '|' inside a cell is escaped
    assert "mean \\|epoch-to-epoch change" in text and "### The report's recipe" in text
    assert str(study) not in text  # no absolute paths
    assert "1600 training images (700 validation images)" in text and "30 runs" in text and "9,469 train" in text
    assert "`LR18-L2-rpe_noise0_fast_e12_64px_embedded_" in text  # the cells every number comes from
    assert not any(line.startswith("## ") for line in text.splitlines()[1:])  # one section


def _section(readme: str) -> str | None:
    lines = readme.splitlines()
    if "## Claims" not in lines:
        return None
    start = lines.index("## Claims")
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    return "\n".join(lines[start:end]).strip()


def test_committed_claims_match_records():
    readme = ROOT / "results" / "README.md"
    section = _section(readme.read_text())
    assert section is not None, "the committed results/README.md has no '## Claims' section"
    assert section == claims.claims_markdown(run_records.collect(ROOT / "results")).strip()
