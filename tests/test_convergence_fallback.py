"""EntropyConvergence's fallback: ELBO patience counted only while the loss is the ELBO and the gap is near zero.

The rule is driven epoch by epoch through the callback's own hooks with the keys an EntropyMonitor publishes, and
compared with Lightning's ``EarlyStopping`` (where every check counts) and with counts worked out by hand; one fit
shows it stopping a run whose gate never opens.
"""

import math
import re
import warnings
from types import SimpleNamespace

import pytest
import torch
from helpers import TRAIN_24, VAL, D, MonitorVAE, monitor_loader, monitor_trainer
from lightning.pytorch.callbacks import EarlyStopping
from lightning.pytorch.trainer.states import TrainerFn

from lightning_entropy_vae import EntropyConvergence, EntropyMonitor

SHUT = {"gap_tolerance": 0.01, "gap_z": 1e9}  # the gate never opens: its bound holds 1e9 standard errors
DIM = 4.0


class _Strategy:
    @staticmethod
    def reduce_boolean_decision(decision, all=True):
        return decision


def _trainer():
    return SimpleNamespace(sanity_checking=False, fast_dev_run=False, state=SimpleNamespace(fn=TrainerFn.FITTING),
                           strategy=_Strategy(), should_stop=False, current_epoch=0, callback_metrics={})


def _run(convergence, epochs, trainer=None, start=0):
    """Per epoch ``(val_elbo, gap, verdict)``: the validation check (Lightning validates before the training epoch
    ends), then the training epoch's end with the published window (standard error 1, D = 4). Returns the epoch
    at whose validation it stopped, or None."""
    trainer = trainer or _trainer()
    for epoch, (value, gap, verdict) in enumerate(epochs[start:], start=start):
        trainer.current_epoch = epoch
        trainer.callback_metrics["entropy/val/elbo"] = torch.tensor(value)
        convergence.on_validation_end(trainer, None)
        if trainer.should_stop:
            return epoch
        trainer.callback_metrics.update({"entropy/train/gap_window": torch.tensor(gap),
                                         "entropy/train/gap_window_se": torch.tensor(1.0),
                                         "entropy/train/data_dim": torch.tensor(DIM),
                                         "entropy/train/objective_is_elbo": torch.tensor(verdict)})
        convergence.on_train_epoch_end(trainer, None)
    return None


def _early_stopping_epoch(values, patience):
    """Where Lightning's EarlyStopping(mode="max") on the same checks stops."""
    stopper = EarlyStopping(monitor="elbo", mode="max", patience=patience, check_finite=True)
    for epoch, value in enumerate(values):
        if stopper._evaluate_stopping_criteria(torch.tensor(value))[0]:
            return epoch
    return None


def _values(seed, epochs=200):
    """A validation ELBO that rises, then wanders: some improvements late, then none."""
    g = torch.Generator().manual_seed(seed)
    rise = [-10.0 + 8.0 * (1 - math.exp(-t / 6)) for t in range(epochs)]
    return [r + 0.3 * float(torch.randn((), generator=g)) for r in rise]


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("patience", [3, 20])
def test_where_every_check_counts_it_stops_where_lightnings_early_stopping_stops(seed, patience):
    """The gap within the bound and the loss the ELBO from the first training epoch on: the first check (before any
    training epoch ended) does not count, which restarts nothing; every later one counts."""
    values = _values(seed)
    convergence = EntropyConvergence(**SHUT, fallback_patience=patience)
    stopped = _run(convergence, [(v, 0.1, 1.0) for v in values])
    expected = _early_stopping_epoch(values, patience)
    assert expected is not None and stopped == expected
    assert not convergence.gate_open
    assert convergence.stop_reason == (
        f"EntropyConvergence: `entropy/val/elbo` did not improve on {max(values[:stopped + 1]):.4g} for {patience}"
        f" checks, each made while the loss was the ELBO and the training gap within 3 x 0.01 x D nats per point;"
        f" stopping at epoch {stopped}.")


@pytest.mark.parametrize(("gap", "verdict", "stops"), [
    (0.11, 1.0, True),  # |gap| <= 3 x 0.01 x 4 = 0.12
    (-0.11, 1.0, True),
    (0.13, 1.0, False),
    (math.nan, 1.0, False),  # the window is not full yet
    (0.0, 0.0, False),  # not the ELBO (beta != 1, warm-up, free bits, a scaled loss)
    (0.0, math.nan, False),  # cannot tell
])
def test_a_check_counts_only_while_the_gap_is_near_zero_and_the_loss_is_the_elbo(gap, verdict, stops):
    values = [-5.0] * 60  # never improves after the first check
    convergence = EntropyConvergence(**SHUT, fallback_patience=20)
    stopped = _run(convergence, [(v, gap, verdict) for v in values])
    assert stopped == (20 if stops else None)  # checks 1-20 count: the 20th without improvement stops


def test_a_check_that_does_not_count_restarts_the_count_and_keeps_the_best():
    """Patience 5, the value never improves on -1 (epoch 0). A gap too large at the end of epoch 4 makes the
    check of epoch 5 not count: the four checks of epochs 1-4 are forgotten, and 6-10 stop."""
    values = [-1.0] + [-2.0] * 19
    epochs = [(v, 0.0, 1.0) for v in values]
    epochs[4] = (values[4], 5.0, 1.0)
    convergence = EntropyConvergence(**SHUT, fallback_patience=5)
    assert _run(convergence, epochs) == 10
    assert convergence.fallback_best == -1.0
    # a value better than any seen, met by a check that does not count (epoch 2: the gap at the end of epoch 1 is
    # too large), is the best from then on: epochs 3-5 do not improve on it and stop
    epochs = [(-1.0, 0.0, 1.0), (-2.0, 5.0, 1.0), (0.0, 0.0, 1.0)] + [(-0.5, 0.0, 1.0)] * 5
    convergence = EntropyConvergence(**SHUT, fallback_patience=3)
    assert _run(convergence, epochs) == 5
    assert convergence.fallback_best == 0.0


def test_require_elbo_objective_false_counts_any_loss_and_none_turns_it_off():
    values = [-5.0] * 40
    convergence = EntropyConvergence(**SHUT, fallback_patience=5, require_elbo_objective=False)
    assert _run(convergence, [(v, 0.0, 0.0) for v in values]) == 5
    convergence = EntropyConvergence(**SHUT, fallback_patience=None)
    assert _run(convergence, [(v, 0.0, 1.0) for v in values]) is None
    assert convergence.fallback_wait == 0


def test_the_gate_and_the_fallback_stop_at_the_earlier_of_the_two():
    """The gate opens at the end of epoch 0 (gap 0 within 0.04): its patience starts at the check of epoch 1, and 5
    checks without improvement stop at epoch 6; the fallback with patience 3 stops at 3, first."""
    values = [-1.0] + [-2.0] * 19
    gate_first = EntropyConvergence(gap_tolerance=0.01, gap_z=0.0, patience=5, fallback_patience=30)
    assert _run(gate_first, [(v, 0.0, 1.0) for v in values]) == 6 and gate_first.gate_open
    fallback_first = EntropyConvergence(gap_tolerance=0.01, gap_z=0.0, patience=5, fallback_patience=3)
    assert _run(fallback_first, [(v, 0.0, 1.0) for v in values]) == 3
    assert "did not improve on -1 for 3 checks, each made while" in fallback_first.stop_reason


@pytest.mark.parametrize("split", [17, 25, 33])
def test_a_resumed_rule_stops_where_the_straight_one_stops(split):
    values = _values(0)
    epochs = [(v, 0.1 if t % 9 else 0.5, 1.0) for t, v in enumerate(values)]  # every 9th epoch does not count
    straight = _run(EntropyConvergence(**SHUT, fallback_patience=6), epochs)
    assert straight is not None
    first = EntropyConvergence(**SHUT, fallback_patience=6)
    trainer = _trainer()
    assert _run(first, epochs[:split], trainer) is None
    assert first.fallback_wait > 0  # mid-count: the count must resume, not restart
    state = first.state_dict()
    assert all(isinstance(v, (bool, int, float, str, type(None))) for v in state.values())
    resumed = EntropyConvergence(**SHUT, fallback_patience=6)
    resumed.load_state_dict(state)
    assert _run(resumed, epochs, trainer, start=split) == straight


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"fallback_patience": 0}, ValueError, r"^Expected `fallback_patience` to be an int >= 1 or None, but got 0\.$"),
    ({"fallback_patience": 2.5}, TypeError,
     r"^Expected `fallback_patience` to be an int >= 1 or None, but got 2\.5\.$"),
    ({"fallback_patience": True}, TypeError,
     r"^Expected `fallback_patience` to be an int >= 1 or None, but got True\.$"),
    ({"fallback_gap_factor": -1.0}, ValueError,
     r"^Expected `fallback_gap_factor` to be a non-negative number, but got -1\.0\.$"),
    ({"fallback_gap_factor": math.nan}, ValueError,
     r"^Expected `fallback_gap_factor` to be a non-negative number, but got nan\.$"),
])
def test_constructor_checks(kwargs, error, match):
    with pytest.raises(error, match=match):
        EntropyConvergence(**kwargs)


def test_the_default_keeps_its_state_key_and_another_fallback_gets_its_own():
    default = EntropyConvergence()
    assert default.state_key == EntropyConvergence(fallback_patience=20, fallback_gap_factor=3).state_key
    assert "fallback" not in default.state_key
    assert EntropyConvergence(fallback_patience=None).state_key != default.state_key


def test_in_a_fit_it_stops_a_run_whose_gate_never_opens(tmp_path):
    """The frozen model (lr = 0): |gap| about 3.45 nats per point, D = 4, within 1 x 1 x 4; the window of 10 batches
    is full at the end of epoch 1 (6 batches per epoch), so the checks of epochs 2 and 3 count and the second one
    without improvement stops."""
    torch.manual_seed(0)
    convergence = EntropyConvergence(gap_tolerance=1.0, gap_z=1e9, fallback_gap_factor=1.0, fallback_patience=2)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(gap_window=10), convergence], max_epochs=8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trainer.fit(MonitorVAE(lr=0.0, sample=False), monitor_loader(TRAIN_24), monitor_loader(VAL))
    gap = float(trainer.callback_metrics["entropy/train/gap_window"])
    assert abs(gap) <= D and not convergence.gate_open
    assert convergence.stopped_epoch == 3 and trainer.current_epoch == 4
    assert re.search(r"did not improve on \S+ for 2 checks, each made while the loss was the ELBO and the training"
                     r" gap within 1 x 1 x D nats per point; stopping at epoch 3\.$", convergence.stop_reason)
