"""What one run's history says (lambdalib.curves): the statistics the claims judge and the spikes' causes, on
hand-made histories; the claims built on them are tested in test_claims.py."""
import math

from lambdalib import curves


def test_the_schedule_check_reads_the_lr_column():
    assert curves.ends_cycle([dict(lr=1e-3), dict(lr=5e-4), dict(lr=1e-5)])
    assert not curves.ends_cycle([dict(lr=1e-3), dict(lr=1e-5), dict(lr=8.5e-4)])  # 5 epochs into the next cycle
    assert not curves.ends_cycle([dict(lr=1e-3), dict(lr=1e-3)]) and not curves.ends_cycle([])
    # climbing again after a restart, though still under 10 % of the peak: not a cycle's end
    assert not curves.ends_cycle([dict(lr=1e-3), dict(lr=1e-5), dict(lr=5e-5)])


def test_a_nan_val_loss_with_a_gradient_burst_is_an_explosion():
    history = [dict(epoch=e, val_loss=v, train_loss=t, grad_norm_max=g, val_loss_batch_stats=v)
               for e, (v, t, g) in enumerate([(2.0, 2.1, 1.0), (1.8, 1.9, 1.2), (math.nan, math.nan, 90.0)], 1)]
    (spike,) = curves.find_spikes(history)
    assert spike["epoch"] == 3 and spike["cause"] == curves.SPIKE_EXPLOSION and spike["factor"] == math.inf
    assert curves.val_loss_rise(history) == 0.0  # the last finite val loss is the lowest


def test_an_infinite_gradient_norm_is_a_burst():
    """grad_norm_max inf (an overflowed norm) with a val spike is an explosion, not read as 'no burst'."""
    history = [dict(epoch=e, val_loss=v, train_loss=t, grad_norm_max=g, val_loss_batch_stats=1.9)
               for e, (v, t, g) in enumerate([(2.0, 2.1, 1.0), (1.8, 1.9, 1.2), (9.0, 1.9, math.inf)], 1)]
    (spike,) = curves.find_spikes(history)
    assert spike["epoch"] == 3 and spike["cause"] == curves.SPIKE_EXPLOSION


def test_a_spike_is_judged_against_the_batch_statistics_loss_own_best():
    """The batch-statistics loss sits above the eval-mode one; a spike of the latter with the former near its own
    best is BatchNorm's running statistics, not the weights (compared with the eval-mode best it would not be)."""
    history = [dict(epoch=e, val_loss=v, train_loss=1.0, grad_norm_max=1.0, val_loss_batch_stats=b)
               for e, (v, b) in enumerate([(0.5, 1.2), (0.5, 1.2), (3.0, 1.5)], 1)]
    (spike,) = curves.find_spikes(history)
    assert spike["epoch"] == 3 and spike["cause"] == curves.SPIKE_BN
