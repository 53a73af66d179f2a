"""The report's claims are checked from run records: synthetic records with known numbers (written with
lambdalib's own writers, no training) give the paired effects, intervals and verdicts they should, every
verdict branch is reached, spikes are told apart (gradient explosion vs BatchNorm running statistics), old
records without val_loss_batch_stats and missing runs say so, and the committed README's Claims section is
what the committed records give."""
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from lambdalib import claims, record, registry
from lambdalib import runs as run_records
from lambdalib.config import RunConfig

ROOT = Path(__file__).resolve().parents[1]
BATCH_STATS = "val_loss_batch_stats"
EPOCHS = 12  # > LATE_EPOCH + 1, so the late oscillation exists
SEEDS = (0, 1, 2)


@pytest.fixture(autouse=True)
def batch_stats_column(monkeypatch):
    """Records hold val_loss_batch_stats (added to record.HISTORY_COLUMNS with the new trainer column)."""
    if BATCH_STATS not in record.HISTORY_COLUMNS:
        monkeypatch.setattr(record, "HISTORY_COLUMNS", [*record.HISTORY_COLUMNS, BATCH_STATS])


def write_run(results: Path, model: str, noise: float, seed: int, *, train: list[float], val: list[float],
              acc: float = 0.5, epoch_time: float = 1.0, grad: list[float] | None = None,
              batch_stats: list[float] | None = None, preset: str = "fast", status: str = "complete",
              diverged_at: int | None = None, old_record: bool = False, monkeypatch=None) -> Path:
    """One run record as the trainer writes it (config.json, history.csv, summary.json), from given curves.
    old_record: history.csv written without the val_loss_batch_stats column (records from before it)."""
    config = RunConfig.from_params(model=model, noise=noise, seed=seed, preset=preset, epochs=len(val), img_size=64,
                                   batch_size=64, data="embedded", results=str(results)).resolved()
    run_dir = config.run_dir()
    record.make_run_dir(run_dir)
    config.save(run_dir / "config.json")
    grad = grad or [2.0] * len(val)
    batch_stats = batch_stats or [v + 0.1 for v in val]
    history = [dict(epoch=e, lr=config.lr, train_loss=t, train_acc=0.5, val_loss=v, val_acc=acc, grad_norm_mean=1.0,
                    grad_norm_max=g, epoch_time_s=epoch_time, train_images_per_s=100.0, finite=math.isfinite(v),
                    precision="fp32", loss_scale=math.nan, skipped_steps=0, **{BATCH_STATS: b})
               for e, (t, v, g, b) in enumerate(zip(train, val, grad, batch_stats), 1)]
    columns = [c for c in record.HISTORY_COLUMNS if not (old_record and c == BATCH_STATS)]
    with monkeypatch.context() as patch:
        patch.setattr(record, "HISTORY_COLUMNS", columns)
        record.write_history(run_dir, [{k: row[k] for k in columns} for row in history])
    summary = record.summarize(history, status, diverged_at, dict(
        run_id=config.run_id, experiment_id=config.experiment_id, model=registry.resolve_name(model),
        label=registry.report_label(registry.resolve_name(model)), noise=noise, preset=preset, params=1, gflops=0.1,
        train_images=1600, val_images=700, amp="off", environment=dict(device="CPU (test)", world_size=1)))
    record.write_summary(run_dir, summary)
    return run_dir


def falling(final: float, epochs: int = EPOCHS) -> list[float]:
    """A training loss falling by 0.1 an epoch to `final`."""
    return [final + 0.1 * (epochs - e) for e in range(1, epochs + 1)]


def val_curve(rise: float, amp: float, epochs: int = EPOCHS) -> list[float]:
    """Val loss: 2.5 falling to 1.9 at epoch 6, then rising by `rise` per epoch, alternating ±amp after epoch 10."""
    return [max(1.9, 2.5 - 0.1 * e) + rise * max(0, e - 6) + (amp if e % 2 else -amp) * (e > claims.LATE_EPOCH)
            for e in range(1, epochs + 1)]


# per model and seed (noise 0; noise 0.5 adds 0.5 to the train loss): the study's known numbers
TRAIN = {"R18": [1.0, 1.05, 1.1], "LR18_L2(rpe)": [0.8, 0.84, 0.89],  # lambda − ResNet: −0.2, −0.21, −0.21
         "R34": [1.0, 1.05, 1.1], "LR34_L3(rpe)": [1.1, 1.2, 1.25]}  # +0.1, +0.15, +0.15
RISE = {"R18": [0.0, 0.01, 0.0], "LR18_L2(rpe)": [0.1, 0.12, 0.11], "R34": [0.0, 0.0, 0.0], "LR34_L3(rpe)": [0.0] * 3}
AMP = {"R18": [0.01, 0.02, 0.015], "LR18_L2(rpe)": [0.2, 0.25, 0.3], "R34": [0.05] * 3, "LR34_L3(rpe)": [0.05] * 3}
ACC = {  # best val top-1 at noise 0 and 0.5
    "R18": [(0.60, 0.50), (0.62, 0.52), (0.58, 0.48)],  # sensitivity 0.10
    "LR18_L2(rpe)": [(0.60, 0.40), (0.62, 0.41), (0.58, 0.39)],  # 0.20, 0.21, 0.19
    "R34": [(0.60, 0.55), (0.62, 0.47), (0.58, 0.46)],  # 0.05, 0.15, 0.12: vs R18 straddles 0
    "LR34_L3(rpe)": [(0.60, 0.57), (0.62, 0.50), (0.58, 0.48)],  # 0.03, 0.12, 0.10: less than R34
}
EPOCH_TIME = {"R18": [1.0, 1.0, 1.0], "LR18_L2(rpe)": [1.6, 1.62, 1.65],  # seconds per epoch
              "R34": [2.0] * 3, "LR34_L3(rpe)": [2.1, 2.08, 2.12]}


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A small study: R18, LR18_L2(rpe), R34, LR34_L3(rpe) at noise 0 and 0.5, seeds 0-2, preset fast, 12
    epochs; LR34_L3(rpe) seed 0 (noise 0) has a gradient explosion at epoch 8, seed 1 a BatchNorm spike at
    epoch 9; R18 seed 2 (noise 0.5) a spike of the weights themselves at epoch 9."""
    results = tmp_path_factory.mktemp("study") / "results"
    patch = pytest.MonkeyPatch()
    if BATCH_STATS not in record.HISTORY_COLUMNS:
        patch.setattr(record, "HISTORY_COLUMNS", [*record.HISTORY_COLUMNS, BATCH_STATS])
    for model in TRAIN:
        for noise in (0.0, 0.5):
            for seed in SEEDS:
                train = falling(TRAIN[model][seed] + noise)
                val = val_curve(RISE[model][seed], AMP[model][seed])
                grad, batch = [2.0] * EPOCHS, [v + 0.1 for v in val]
                if (model, noise, seed) == ("LR34_L3(rpe)", 0.0, 0):  # explosion: gradients and train loss go
                    val[7], grad[7], train[7], batch[7] = 50.0, 100.0, 5.0, 40.0
                if (model, noise, seed) == ("LR34_L3(rpe)", 0.0, 1):  # BN: batch statistics stay normal
                    val[8], batch[8] = 30.0, 2.05
                if (model, noise, seed) == ("R18", 0.5, 2):  # the weights: batch statistics spike too
                    val[8], batch[8] = 10.0, 9.0
                write_run(results, model, noise, seed, train=train, val=val, grad=grad, batch_stats=batch,
                          acc=ACC[model][seed][noise > 0], epoch_time=EPOCH_TIME[model][seed], monkeypatch=patch)
    patch.undo()
    return results


@pytest.fixture(scope="module")
def runs(study) -> pd.DataFrame:
    return run_records.collect(study)


def by_key(claim_list) -> dict[str, claims.Claim]:
    return {c.key: c for c in claim_list}


def expected(values, ratio=False):
    """Mean and 95 % t interval computed here, independently of the module."""
    xs = np.log(values) if ratio else np.asarray(values, float)
    half = stats.t.ppf(0.975, len(xs) - 1) * xs.std(ddof=1) / math.sqrt(len(xs))
    out = np.array([xs.mean(), xs.mean() - half, xs.mean() + half])
    return np.exp(out) if ratio else out


def comparison(claim: claims.Claim, what: str, where: str) -> claims.Comparison:
    found = [c for c in claim.comparisons if c.what.startswith(what) and c.where == where]
    assert len(found) == 1, [(c.what, c.where) for c in claim.comparisons]
    return found[0]


def check(c: claims.Comparison, values, verdict, ratio=False):
    assert c.effect.n == len(values)
    assert np.allclose([c.effect.mean, c.effect.low, c.effect.high], expected(values, ratio))
    assert c.verdict == verdict


# ----------------------------------------------------------------------------------- statistics
def test_interval_and_every_verdict_branch():
    effect = claims.t_interval([-0.2, -0.21, -0.21])
    assert np.allclose([effect.mean, effect.low, effect.high], expected([-0.2, -0.21, -0.21]))
    assert claims.interval_verdict(effect, 0.0, "below") == claims.SUPPORTED
    assert claims.interval_verdict(effect, 0.0, "above") == claims.NOT_SUPPORTED
    straddling = claims.t_interval([-0.3, 0.3, 0.05])
    assert claims.interval_verdict(straddling, 0.0, "below") == claims.CANNOT_TELL
    assert claims.interval_verdict(straddling, 0.0, "above") == claims.CANNOT_TELL
    one = claims.t_interval([-5.0])
    assert one.n == 1 and one.mean == -5.0 and math.isnan(one.low)
    assert claims.interval_verdict(one, 0.0, "below") == claims.CANNOT_TELL  # n < 2
    touching = claims.t_interval([0.0, 0.0, 0.0])  # interval [0, 0]: touching the threshold is the other side
    assert claims.interval_verdict(touching, 0.0, "below") == claims.NOT_SUPPORTED
    assert claims.interval_verdict(touching, 0.0, "above") == claims.NOT_SUPPORTED
    assert claims.t_interval([1.0, math.nan, None, 3.0]).n == 2  # missing values dropped
    ratio = claims.t_interval([1.5, 1.6, 0.0, -1.0], ratio=True)  # non-positive ratios dropped
    assert ratio.n == 2 and np.isclose(ratio.mean, math.sqrt(1.5 * 1.6))
    with pytest.raises(ValueError, match="supported_if"):
        claims.interval_verdict(effect, 0.0, "sideways")


def test_run_statistics_on_hand_made_histories():
    history = [dict(epoch=e, val_loss=v) for e, v in enumerate([3.0, 2.0, 1.5, 2.5, math.nan, 2.0], 1)]
    assert claims.val_loss_rise(history) == pytest.approx(0.5)  # last finite 2.0 − lowest 1.5
    assert claims.late_oscillation(history, after=2) == pytest.approx((0.5 + 1.0) / 2)  # |1.5−2|, |2.5−1.5|
    assert math.isnan(claims.late_oscillation(history, after=10))  # no epochs after 10
    assert math.isnan(claims.val_loss_rise([]))
    assert claims.seconds_per_epoch(pd.Series(dict(train_time_s=30.0, epochs_done=3))) == 10.0
    assert math.isnan(claims.seconds_per_epoch(pd.Series(dict(train_time_s=30.0, epochs_done=0))))


def _history(val, train=None, grad=None, batch=None):
    n = len(val)
    train, grad, batch = train or [1.0] * n, grad or [2.0] * n, batch or [math.nan] * n
    return [dict(epoch=e, val_loss=v, train_loss=t, grad_norm_max=g, val_loss_batch_stats=b)
            for e, (v, t, g, b) in enumerate(zip(val, train, grad, batch), 1)]


def test_spikes_are_told_apart_both_ways():
    calm = [2.3, 2.1, 2.0, 2.0]
    assert claims.find_spikes(_history(calm, batch=calm)) == []
    # eval-mode loss spikes, the same weights on batch statistics do not, gradients and train loss calm: BN
    bn = claims.find_spikes(_history([2.3, 2.1, 400.0, 2.0], batch=[2.4, 2.2, 2.3, 2.1]))
    assert [(s.epoch, s.cause) for s in bn] == [(3, claims.SPIKE_BN)]
    assert bn[0].best_val_before == 2.1 and bn[0].factor == pytest.approx(400 / 2.1)
    # gradients 50x their median: explosion, whatever the batch statistics say
    burst = claims.find_spikes(_history([2.3, 2.1, 400.0, 2.0], grad=[2.0, 2.0, 100.0, 2.0],
                                        batch=[2.4, 2.2, 2.3, 2.1]))
    assert [s.cause for s in burst] == [claims.SPIKE_EXPLOSION]
    assert burst[0].grad_norm_max == 100.0 and burst[0].grad_norm_median == 2.0
    # train loss rising with it: explosion; a non-finite loss: explosion
    rise = claims.find_spikes(_history([2.3, 2.1, 9.0, 2.0], train=[2.0, 1.0, 1.6, 1.0], batch=[2.4, 2.2, 2.3, 2.1]))
    assert [s.cause for s in rise] == [claims.SPIKE_EXPLOSION]
    nan = claims.find_spikes(_history([2.3, math.nan], train=[2.0, math.nan]))
    assert [(s.epoch, s.cause, s.factor) for s in nan] == [(2, claims.SPIKE_EXPLOSION, math.inf)]
    nan_grad = claims.find_spikes(_history([2.3, 9.0], grad=[2.0, math.nan], batch=[2.4, 2.4]))
    assert [s.cause for s in nan_grad] == [claims.SPIKE_EXPLOSION]
    # batch statistics spike too, gradients calm: the weights; no batch statistics (old record): unclassified
    weights = claims.find_spikes(_history([2.3, 2.1, 9.0], batch=[2.4, 2.2, 8.0]))
    assert [s.cause for s in weights] == [claims.SPIKE_WEIGHTS]
    old = claims.find_spikes(_history([2.3, 2.1, 9.0]))
    assert [s.cause for s in old] == [claims.SPIKE_UNCLASSIFIED]
    # below the factor is no spike; the first epoch never is
    assert claims.find_spikes(_history([50.0, 2.1, 2.1 * claims.SPIKE_FACTOR])) == []


# ------------------------------------------------------------------------------ claims from records
def test_train_loss_claim_paired_by_seed(runs):
    claim = by_key(claims.evaluate_claims(runs))["1"]
    for noise in ("0 %", "50 %"):
        where = f"fast, {noise} noise"
        check(comparison(claim, "LR18_L2(rpe)", where),
              np.subtract(TRAIN["LR18_L2(rpe)"], TRAIN["R18"]), claims.SUPPORTED)
        check(comparison(claim, "LR34_L3(rpe)", where),
              np.subtract(TRAIN["LR34_L3(rpe)"], TRAIN["R34"]), claims.NOT_SUPPORTED)
        assert comparison(claim, "LR18_L2(rpe)", where).seeds == SEEDS
    assert claim.verdict == claims.MIXED and claim.verdict_text == (
        "mixed: supported for LR18_L2(rpe) − R18 (fast, 0 % noise; fast, 50 % noise); "
        "not supported for LR34_L3(rpe) − R34 (fast, 0 % noise; fast, 50 % noise)")
    only_18 = by_key(claims.evaluate_claims(runs[runs["label"].isin(["R18", "LR18_L2(rpe)"])]))["1"]
    assert only_18.verdict == claims.SUPPORTED and only_18.verdict_text == "supported (2 of 2 comparisons)"
    only_34 = by_key(claims.evaluate_claims(runs[runs["label"].isin(["R34", "LR34_L3(rpe)"])]))["1"]
    assert only_34.verdict == claims.NOT_SUPPORTED
    one_seed = by_key(claims.evaluate_claims(runs[runs["seed"] == 0]))["1"]
    assert one_seed.verdict == claims.CANNOT_TELL and "fewer than 2 seed pairs" in one_seed.verdict_text
    assert all(c.effect.n == 1 for c in one_seed.comparisons)
    # a lambda without its ResNet is no comparison
    alone = by_key(claims.evaluate_claims(runs[runs["label"] == "LR18_L2(rpe)"]))["1"]
    assert alone.comparisons == [] and alone.our_evidence == claims.NO_RUNS
    assert claims.NO_RUNS in alone.verdict_text


def _late(model, seed):
    val = val_curve(RISE[model][seed], AMP[model][seed])
    return np.mean(np.abs(np.diff(val[claims.LATE_EPOCH - 1:])))


def _rise(model, seed):
    val = val_curve(RISE[model][seed], AMP[model][seed])
    return val[-1] - min(val)


def test_overfit_and_oscillation_claims(runs):
    found = by_key(claims.evaluate_claims(runs[runs["noise"] == 0.5]))
    where = "fast, 50 % noise"  # (R18 seed 2's spike at epoch 9 moves neither its minimum nor its late epochs)
    rises = [_rise("LR18_L2(rpe)", s) - _rise("R18", s) for s in SEEDS]
    check(comparison(found["2a"], "LR18_L2(rpe)", where), rises, claims.SUPPORTED)
    ratios = [_late("LR18_L2(rpe)", s) / _late("R18", s) for s in SEEDS]
    check(comparison(found["2b"], "LR18_L2(rpe)", where), ratios, claims.SUPPORTED, ratio=True)
    assert comparison(found["2b"], "LR18_L2(rpe)", where).effect.ratio
    # identical curves: ratio exactly 1 in every seed -> interval [1, 1] -> not supported
    check(comparison(found["2b"], "LR34_L3(rpe)", where), [1.0, 1.0, 1.0], claims.NOT_SUPPORTED, ratio=True)
    # runs too short for the late statistic: no values, and the verdict says what is needed
    short = Path(runs["_path"].iloc[0]).parents[2] / "short"
    patch = pytest.MonkeyPatch()
    for model in ("R18", "LR18_L2(rpe)"):
        for seed in SEEDS:
            write_run(short, model, 0.0, seed, train=falling(1.0, 5), val=val_curve(0.0, 0.0, 5), monkeypatch=patch)
    oscillation = by_key(claims.evaluate_claims(run_records.collect(short)))["2b"]
    assert oscillation.comparisons[0].effect.n == 0 and oscillation.verdict == claims.CANNOT_TELL
    assert "at least 11 epochs" in oscillation.verdict_text


def test_noise_sensitivity_claims(runs):
    found = by_key(claims.evaluate_claims(runs))
    where = "fast, noise 0 → 50 %"
    sens = {m: [a - b for a, b in ACC[m]] for m in ACC}
    check(comparison(found["3a"], "LR18_L2(rpe)", where), np.subtract(sens["LR18_L2(rpe)"], sens["R18"]),
          claims.SUPPORTED)
    check(comparison(found["3a"], "LR34_L3(rpe)", where), np.subtract(sens["LR34_L3(rpe)"], sens["R34"]),
          claims.NOT_SUPPORTED)
    check(comparison(found["3b"], "R34", where), np.subtract(sens["R34"], sens["R18"]), claims.CANNOT_TELL)
    assert found["3b"].verdict == claims.CANNOT_TELL and "straddle" in found["3b"].verdict_text
    assert "pp" in found["3a"].our_evidence and len(comparison(found["3a"], "LR18_L2(rpe)", where).experiment_ids) == 4
    # without noisy runs there is nothing to compare
    clean = by_key(claims.evaluate_claims(runs[runs["noise"] == 0]))
    assert clean["3a"].comparisons == [] and clean["3a"].our_evidence == claims.NO_RUNS


def test_explosion_claim_classifies_and_counts(runs):
    claim = by_key(claims.evaluate_claims(runs))["4"]
    causes = {(s.label, s.where, s.seed, s.epoch): s.cause for s in claim.spikes}
    assert causes == {("LR34_L3(rpe)", "fast, 0 % noise", 0, 8): claims.SPIKE_EXPLOSION,
                      ("LR34_L3(rpe)", "fast, 0 % noise", 1, 9): claims.SPIKE_BN,
                      ("R18", "fast, 50 % noise", 2, 9): claims.SPIKE_WEIGHTS}
    assert claim.verdict == claims.SUPPORTED and claim.verdict_text == "supported (1 of 6 LR34_L3 runs)"
    assert "LR34_L3(rpe): 2/6 runs spike" in claim.our_evidence and "R18: 1/6 runs spike" in claim.our_evidence
    assert "no spike in the other 12 runs" in claim.our_evidence
    largest = max(claim.spikes, key=lambda s: s.factor)
    assert largest.val_loss == 50.0 and largest.grad_norm_max == 100.0 and largest.train_loss == 5.0
    assert "largest: LR34_L3(rpe), fast, 0 % noise, seed 0, epoch 8: val loss 50.000" in claim.our_evidence
    # without the exploding run, LR34_L3's only spike is BatchNorm's: not supported
    calm = runs[~((runs["label"] == "LR34_L3(rpe)") & (runs["seed"] == 0) & (runs["noise"] == 0))]
    not_supported = by_key(claims.evaluate_claims(calm))["4"]
    assert not_supported.verdict == claims.NOT_SUPPORTED
    assert "0 of 5 LR34_L3 runs explode; their spikes: 1 BatchNorm running statistics" in not_supported.verdict_text
    # no LR34_L3 runs at all
    none = by_key(claims.evaluate_claims(runs[runs["label"] == "R18"]))["4"]
    assert none.verdict == claims.CANNOT_TELL and claims.NO_RUNS in none.verdict_text


def test_explosion_claim_on_old_records_and_short_runs(tmp_path):
    patch = pytest.MonkeyPatch()
    val = [2.3, 2.1, 2.0, 30.0] + [2.0] * 8  # a spike at epoch 4 with calm gradients and train loss
    write_run(tmp_path, "LR34_L3(rpe)", 0.0, 0, train=falling(1.0), val=val, old_record=True, monkeypatch=patch)
    history = run_records.collect(tmp_path)["_history"].iloc[0]
    assert all(math.isnan(r[BATCH_STATS]) for r in history)  # an old record reads the column as missing
    claim = by_key(claims.evaluate_claims(run_records.collect(tmp_path)))["4"]
    assert [s.cause for s in claim.spikes] == [claims.SPIKE_UNCLASSIFIED]
    assert claim.verdict == claims.CANNOT_TELL and "without val_loss_batch_stats" in claim.verdict_text
    short = tmp_path / "short"
    write_run(short, "LR34_L3(rpe)", 0.0, 0, train=falling(1.0, 3), val=[2.3, 2.2, 2.1], monkeypatch=patch)
    claim = by_key(claims.evaluate_claims(run_records.collect(short)))["4"]
    assert claim.verdict == claims.CANNOT_TELL and "trained 3 epochs" in claim.verdict_text


def test_time_claim_against_the_reports_extra_hour(runs):
    claim = by_key(claims.evaluate_claims(runs))["5"]
    published = registry.published()
    baselines = published[published["label"].isin(["R18", "R34"])]["training_time_s"]
    threshold = 1 + claims.SLOWDOWN_SHARE * 3600 / baselines.mean()
    assert f"×{threshold:.2f}" in claim.statistic
    where = "fast, 0 % noise"
    fast = comparison(claim, "LR18_L2(rpe)", where)
    check(fast, np.divide(EPOCH_TIME["LR18_L2(rpe)"], EPOCH_TIME["R18"]), claims.SUPPORTED, ratio=True)
    assert fast.effect.low > threshold
    check(comparison(claim, "LR34_L3(rpe)", where), np.divide(EPOCH_TIME["LR34_L3(rpe)"], EPOCH_TIME["R34"]),
          claims.NOT_SUPPORTED, ratio=True)
    assert "1h 32m 37s" in claim.report_evidence  # the report's own times, from published.csv


def write_sweep(path: Path, rows: list[tuple]) -> Path:
    frame = pd.DataFrame(rows, columns=["impl", "side", "tokens", "batch", "channels", "device", "status", "peak_MB"])
    frame.to_csv(path, index=False)
    return path


def test_memory_claim_from_the_attention_sweep(tmp_path, runs):
    ok = [("ours rpe", 8, 64, 8, 128, "cpu", "ok", 4.0), ("attn naive", 8, 64, 8, 128, "cpu", "ok", 4.0),
          ("ours rpe", 16, 256, 8, 128, "cpu", "ok", 30.0), ("ours lc", 16, 256, 8, 128, "cpu", "ok", 20.0),
          ("attn naive", 16, 256, 8, 128, "cpu", "ok", 60.0), ("sdpa", 16, 256, 8, 128, "cpu", "ok", 25.0),
          ("ours rpe", 32, 1024, 8, 128, "cpu", "ok", 170.0),
          ("attn naive", 32, 1024, 8, 128, "cpu", "skipped (too slow)", math.nan)]
    claim = by_key(claims.evaluate_claims(runs, attention_sweep=write_sweep(tmp_path / "a.csv", ok)))["6"]
    assert claim.verdict == claims.SUPPORTED  # at side 16, the largest where attention ran
    assert "map side 16" in claim.our_evidence and "ours rpe 30 (×0.50)" in claim.our_evidence
    assert "a fused attention kernel needs less than ours rpe" in claim.verdict_text  # 30 > 25
    worse = [r if r[0] != "attn naive" else (*r[:7], 10.0) for r in ok]
    assert by_key(claims.evaluate_claims(runs, attention_sweep=write_sweep(tmp_path / "b.csv", worse)))["6"].verdict \
        == claims.NOT_SUPPORTED
    mixed = [r if r[0] != "attn naive" else (*r[:7], 25.0) for r in ok]
    assert by_key(claims.evaluate_claims(runs, attention_sweep=write_sweep(tmp_path / "c.csv", mixed)))["6"].verdict \
        == claims.MIXED
    missing = by_key(claims.evaluate_claims(runs, attention_sweep=tmp_path / "none.csv"))["6"]
    assert missing.verdict == claims.CANNOT_TELL and "none.csv is missing" in missing.verdict_text
    (tmp_path / "cols.csv").write_text("impl,side\nours rpe,8\n")
    columns = by_key(claims.evaluate_claims(runs, attention_sweep=tmp_path / "cols.csv"))["6"]
    assert columns.verdict == claims.CANNOT_TELL and "lacks the column(s)" in columns.verdict_text
    # the default: results_dir/benchmarks/attention_sweep.csv of the folder the runs were read from
    default = by_key(claims.evaluate_claims(runs))["6"]
    assert "benchmarks/attention_sweep.csv is missing" in default.verdict_text


def test_recipe_claim(tmp_path):
    patch = pytest.MonkeyPatch()
    report_losses, fast_losses = [2.31, 2.29, 2.30], [1.5, 1.6, 1.55]
    for seed in SEEDS:
        for preset, losses in (("report", report_losses), ("fast", fast_losses)):
            val = [losses[seed] + 0.1 * (EPOCHS - e) for e in range(1, EPOCHS + 1)]
            write_run(tmp_path, "R18", 0.0, seed, train=falling(1.0), val=val, preset=preset, monkeypatch=patch)
    claim = by_key(claims.evaluate_claims(run_records.collect(tmp_path)))["7"]
    chance = comparison(claim, "R18 − ln(10)", "report, 0 % noise")
    check(chance, np.subtract(report_losses, math.log(10)), claims.NOT_SUPPORTED)  # at chance: does not train
    context = comparison(claim, "R18: report − fast", "report, 0 % noise")
    check(context, np.subtract(report_losses, fast_losses), claims.CONTEXT)
    assert claim.verdict == claims.NOT_SUPPORTED
    trained = tmp_path / "trained"
    for seed in SEEDS:
        val = [fast_losses[seed] + 0.1 * (EPOCHS - e) for e in range(1, EPOCHS + 1)]
        write_run(trained, "R18", 0.0, seed, train=falling(1.0), val=val, preset="report", monkeypatch=patch)
    assert by_key(claims.evaluate_claims(run_records.collect(trained)))["7"].verdict == claims.SUPPORTED


def test_no_runs_and_unfinished_runs(tmp_path):
    (tmp_path / "runs").mkdir()
    empty = run_records.collect(tmp_path)
    found = claims.evaluate_claims(empty, attention_sweep=tmp_path / "none.csv")
    assert [c.key for c in found] == ["1", "2a", "2b", "3a", "3b", "4", "5", "6", "7"]
    assert all(c.verdict == claims.CANNOT_TELL for c in found)
    assert all(c.our_evidence == claims.NO_RUNS for c in found if c.key != "6")
    text = claims.claims_markdown(empty, attention_sweep=tmp_path / "none.csv")
    assert text.startswith("## Claims\n") and "No finished runs here" in text
    patch = pytest.MonkeyPatch()
    for model in ("R18", "LR18_L2(rpe)"):
        for seed in SEEDS:
            write_run(tmp_path, model, 0.0, seed, train=falling(1.0), val=val_curve(0, 0), status="running",
                      monkeypatch=patch)
    unfinished = run_records.collect(tmp_path)
    assert len(unfinished) == 6
    assert by_key(claims.evaluate_claims(unfinished))["1"].comparisons == []  # only finished runs count


def test_markdown_section(runs, study):
    text = claims.claims_markdown(runs)
    assert text == claims.claims_markdown(run_records.collect(study))  # deterministic
    assert text.startswith("## Claims\n")
    table = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| #")]
    keys = ("1", "2a", "2b", "3a", "3b", "4", "5", "6", "7")
    assert [row.split(" | ")[0] for row in table] == ["| " + k for k in keys]
    assert all(row.count(" | ") == 4 for row in table)  # five columns: any '|' inside a cell is escaped
    assert "mean \\|epoch-to-epoch change" in text
    assert str(study) not in text  # no absolute paths
    assert "1,600 train / 700 val images at 64 px, 12 epochs (300 steps of batch 64), 24 runs (seeds 0, 1, 2)" in text
    assert "CPU (test)" in text and "9,469 train" in text
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
