"""The EntropyMonitor's path from a step's output to its metrics.

No device work in the batch hooks of a step that does not log (ATen ops counted with a
``TorchDispatchMode``), a fixed number of ops per logging step whatever the number of batches it
reduces, every batch checked against the stage's first one, returned parameters read before the
optimizer step also when parameters are views of one flat storage (FSDP's layout), ``None`` outputs
skipped, an epoch of NaN batches logged as NaN, and ``VAEOutput`` under manual optimization.
"""

import csv
import math
import re
import warnings

import pytest
import torch
from helpers import (
    TRAIN_24,
    VAL_12,
    ManualVAE,
    MonitorVAE,
    assert_logged_equal,
    monitor_data,
    monitor_loader,
    monitor_reference,
    monitor_trainer,
)
from lightning.pytorch.loggers import CSVLogger
from torch.utils._python_dispatch import TorchDispatchMode

from lightning_entropy_vae import EntropyMonitor


def _fit(tmp_path, model, monitor, val=True, **kwargs):
    trainer = monitor_trainer(tmp_path, [monitor], **kwargs)
    trainer.fit(model, monitor_loader(TRAIN_24), monitor_loader(VAL_12) if val else None)
    return trainer


# --------------------------------------------------------------------------------------- device work
class OpCounter(TorchDispatchMode):
    """Counts the ATen ops that are not views (a view only makes new metadata: no kernel, no copy)."""

    def __init__(self):
        super().__init__()
        self.ops = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        returns = func._schema.returns
        if not (returns and all(r.alias_info is not None and not r.alias_info.is_write for r in returns)):
            self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


class CountingMonitor(EntropyMonitor):
    """Runs the batch hooks under an OpCounter: ``ops[hook]`` lists each call's non-view ops."""

    HOOKS = ("on_train_batch_start", "on_before_optimizer_step", "on_train_batch_end", "on_validation_batch_end")

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.ops = {hook: [] for hook in self.HOOKS}
        for hook in self.HOOKS:
            setattr(self, hook, self._counted(hook, getattr(super(), hook)))

    def _counted(self, hook, method):
        def run(*args, **kwargs):
            with OpCounter() as counter:
                method(*args, **kwargs)
            self.ops[hook].append(counter.ops)
        return run


@pytest.mark.parametrize(("param_output", "accumulate"), [("clone", 1), ("live", 1), ("view", 1), ("live", 2)])
def test_batch_hooks_of_steps_that_do_not_log_only_keep_references(tmp_path, param_output, accumulate):
    """No op at all for a returned copy; one copy per step for a returned live parameter (or view of one)."""
    torch.manual_seed(0)
    monitor = CountingMonitor()
    trainer = _fit(tmp_path, MonitorVAE(lr=0.05, param_output=param_output), monitor, max_epochs=2,
                   log_every_n_steps=1000, accumulate_grad_batches=accumulate)
    assert "entropy/train/sum" in trainer.callback_metrics
    ops = monitor.ops
    assert len(ops["on_train_batch_end"]) == 12 and len(ops["on_validation_batch_end"]) == 6
    assert all(not calls for calls in ops["on_train_batch_start"])
    # a stage's first batch builds its metrics; every later one only keeps references
    assert ops["on_train_batch_end"][0] and ops["on_validation_batch_end"][0]
    assert all(not calls for calls in ops["on_validation_batch_end"][1:])
    per_batch = [len(a) + len(b) for a, b in zip(ops["on_train_batch_end"], _per_batch(ops, accumulate))][1:]
    copies = {op for calls in ops["on_before_optimizer_step"] for op in calls}
    assert copies <= {"aten.clone.default", "aten.cat.default"}, copies
    if param_output == "clone":  # the first optimizer step copies the small parameters: nothing is known yet
        assert per_batch == [0] * 11 and [len(calls) for calls in ops["on_before_optimizer_step"]][1:] == [0] * (
            len(ops["on_before_optimizer_step"]) - 1)
    else:  # one copy per batch: at the optimizer step, or at batch end for a batch that does not step
        assert per_batch == [1] * 11, per_batch


def _per_batch(ops, accumulate):
    """The optimizer-step hooks' ops attributed to the batch whose step they preceded."""
    steps = iter(ops["on_before_optimizer_step"])
    return [next(steps) if (i % 6) % accumulate == accumulate - 1 or i % 6 == 5 else [] for i in range(12)]


def test_each_logging_step_runs_the_same_ops_whatever_the_number_of_batches_it_reduces(tmp_path):
    counts = {}
    for every in (2, 6):
        torch.manual_seed(0)
        monitor = CountingMonitor()
        train = monitor_data(48, seed=4)  # 12 batches of 4
        trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1, log_every_n_steps=every,
                                  logger=CSVLogger(tmp_path / str(every)))  # no logger: no step logging
        trainer.fit(MonitorVAE(lr=0.05), monitor_loader(train))
        logging = [len(calls) for calls in monitor.ops["on_train_batch_end"][1:] if calls]  # 0: the set-up
        assert len(logging) == 12 // every
        counts[every] = logging[1:]  # the first logging step also builds the window's cached constants
    assert len(set(counts[2] + counts[6])) == 1, counts  # fused: 2 or 6 batches, the same ops
    assert counts[2][0] <= 100, counts[2][0]  # stack, probe, one host read, three metric updates, the window



def test_without_a_logger_no_step_reduces_and_the_epoch_values_are_the_same(tmp_path):
    """The step keys only go to loggers: with none, the kept batches wait for the epoch end (same numbers)."""
    results = {}
    for logger in (False, True):
        torch.manual_seed(0)
        monitor = CountingMonitor()
        trainer = monitor_trainer(tmp_path, [monitor], max_epochs=1, log_every_n_steps=2,
                                  logger=CSVLogger(tmp_path / "csv") if logger else False)
        trainer.fit(MonitorVAE(lr=0.05), monitor_loader(monitor_data(48, seed=4)))
        results[logger] = {k: v.item() for k, v in trainer.callback_metrics.items() if k.startswith("entropy/")}
        reducing = [calls for calls in monitor.ops["on_train_batch_end"][1:] if calls]
        assert len(reducing) == (6 if logger else 0), len(reducing)
    assert results[False] == pytest.approx(results[True], rel=1e-5, abs=1e-5, nan_ok=True)  # float32, another order

# ------------------------------------------------------------------------- every batch is checked
class Altered(MonitorVAE):
    """Applies ``alter(out)`` to the output of training batch ``at`` of every epoch."""

    def __init__(self, alter, at, **kwargs):
        super().__init__(**kwargs)
        self.alter, self.at = alter, at

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        return self.alter(out) if batch_idx == self.at else out


LATER = [
    ("elbo squeezed", lambda out: {**out, "elbo": out["elbo"][:1].squeeze()},
     "expected `elbo` of shape (4,) (its batch dimension 0 matching `enc_logvar`), as set by the stage's first"
     " batch (4,), but got ()."),
    ("fewer latents", lambda out: {**out, "enc_mean": out["enc_mean"][:, :1], "enc_logvar": out["enc_logvar"][:, :1]},
     "expected `enc_mean` of shape (4, 2) (its batch dimension 0 matching `enc_logvar`), as set by the stage's"
     " first batch (4, 2), but got (4, 1)."),
    ("elbo (1,)", lambda out: {**out, "elbo": out["elbo"][:1]},
     "expected `elbo` of shape (4,) (its batch dimension 0 matching `enc_logvar`), as set by the stage's first"
     " batch (4,), but got (1,)."),
    ("elbo (B-1,)", lambda out: {**out, "elbo": out["elbo"][:-1]},
     "expected `elbo` of shape (4,) (its batch dimension 0 matching `enc_logvar`), as set by the stage's first"
     " batch (4,), but got (3,)."),
    ("dec_logvar per point", lambda out: {**out, "dec_logvar": out["dec_logvar"].expand(4, 4)},
     "expected `dec_logvar` of shape (), as set by the stage's first batch (), but got (4, 4)."),
    ("x", lambda out: {**out, "x": out["x"][:, :3]},
     "expected `x` of shape (4, 4) (its batch dimension 0 matching `enc_logvar`), as set by the stage's first"
     " batch (4, 4), but got (4, 3)."),
]


@pytest.mark.parametrize(("alter", "message"), [case[1:] for case in LATER], ids=[case[0] for case in LATER])
def test_a_later_batch_that_disagrees_with_the_first_raises_the_first_batch_error(tmp_path, alter, message):
    """Checked from metadata on every batch: no bare PyTorch error at the flush, no silently wrong value."""
    pattern = re.escape("EntropyMonitor (on_train_batch_end of Altered) " + message)
    with pytest.raises(ValueError, match="^" + pattern + "$"):
        _fit(tmp_path, Altered(alter, at=2), EntropyMonitor(stages=("train",)), val=False, log_every_n_steps=1)


@pytest.mark.parametrize(("alter", "error", "message"), [
    (lambda out: {**out, "prior_logvar": torch.zeros(2)}, ValueError,
     "got `prior_logvar` in a later batch's output, but not in the stage's first batch, which fixed its inputs"
     " ['dec_logvar', 'dec_mean', 'elbo', 'enc_logvar', 'enc_mean', 'x']. Return the same keys from every batch."),
    (lambda out: {**out, "dec_logvar": [0.5]}, TypeError,  # a Python number becomes a 0-d tensor; a list does not
     "expected `dec_logvar` to be a torch.Tensor, as in the stage's first batch, but got list."),
    (lambda out: {**out, "enc_logvar": out["enc_logvar"].long()}, TypeError,
     "expected `enc_logvar` to be a floating-point tensor, but got dtype torch.int64."),
])
def test_later_batch_keys_and_types_are_checked(tmp_path, alter, error, message):
    pattern = re.escape("EntropyMonitor (on_train_batch_end of Altered) " + message)
    with pytest.raises(error, match="^" + pattern + "$"):
        _fit(tmp_path, Altered(alter, at=1), EntropyMonitor(stages=("train",)), val=False)


def test_a_short_last_batch_is_accepted(tmp_path):
    torch.manual_seed(0)
    model = MonitorVAE(lr=0.05)
    logger = CSVLogger(tmp_path, name="short", version=0)
    trainer = monitor_trainer(tmp_path, [EntropyMonitor(stages=("train",))], max_epochs=1, log_every_n_steps=4,
                              logger=logger)
    trainer.fit(model, monitor_loader(monitor_data(21, seed=5)))  # 5 batches of 4, then 1
    entries = model.train_epoch(0)
    assert [int(e["x"].shape[0]) for e in entries][-2:] == [4, 1]
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(entries))
    with open(logger.log_dir + "/metrics.csv", newline="") as f:  # the window of batches 1-4 at step 3
        step = [row for row in csv.DictReader(f) if row.get("entropy/train_step/sum")]
    assert [int(row["step"]) for row in step] == [3]
    assert float(step[0]["entropy/train_step/sum"]) == pytest.approx(monitor_reference(entries[:4])["sum"], rel=1e-5)


# -------------------------------------------------------------------- None outputs and empty epochs
class SkipsBatches(MonitorVAE):
    """``training_step`` returns None for the batches in ``skip`` (Lightning's "skip this batch")."""

    def __init__(self, skip, **kwargs):
        super().__init__(**kwargs)
        self.skip = skip

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if batch_idx in self.skip:
            self.train_log.pop()
            return None
        return out

    def on_train_batch_end(self, outputs, batch, batch_idx):
        if batch_idx not in self.skip:
            super().on_train_batch_end(outputs, batch, batch_idx)


def test_training_step_returning_none_is_skipped_and_counted(tmp_path):
    torch.manual_seed(0)
    model = SkipsBatches(skip={0, 3}, lr=0.05)
    trainer = _fit(tmp_path, model, EntropyMonitor(), max_epochs=2)
    metrics = trainer.callback_metrics
    assert float(metrics["entropy/train/skipped_batches"]) == 2.0
    kept = model.train_epoch(1)
    assert [e["batch_idx"] for e in kept] == [1, 2, 4, 5]
    assert_logged_equal(metrics, "entropy/train", monitor_reference(kept))


class AllNaN(MonitorVAE):
    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        out["enc_logvar"] = out["enc_logvar"].detach() + float("nan")
        return out


def test_an_epoch_of_nan_batches_logs_nan_latents_and_warns_once(tmp_path):
    logger = CSVLogger(tmp_path, name="nan", version=0)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        trainer = _fit(tmp_path, AllNaN(lr=0.0), EntropyMonitor(stages=("train",)), val=False, max_epochs=2,
                       logger=logger)
    metrics = trainer.callback_metrics
    assert float(metrics["entropy/train/skipped_batches"]) == 6.0
    assert math.isnan(float(metrics["entropy/train/active_latents"]))  # not "all H latents active"
    assert math.isnan(float(metrics["entropy/train/sum"]))
    with open(logger.log_dir + "/metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    flags = [row["entropy/train/collapsed/0"] for row in rows if row.get("entropy/train/collapsed/0")]
    assert flags and all(math.isnan(float(f)) for f in flags)  # unknown, not "not collapsed"
    empty = [w for w in record if "no batch of the `train` epoch" in str(w.message)]
    assert len(empty) == 1
    assert str(empty[0].message) == (
        "EntropyMonitor: no batch of the `train` epoch 0 was kept (6 skipped: NaN/Inf values, or a step that"
        " returned None), so its values, active latents and collapse flags are NaN."
    )


class AllNone(MonitorVAE):
    def training_step(self, batch, batch_idx):
        super().training_step(batch, batch_idx)


def test_an_epoch_of_none_outputs_warns_that_there_is_nothing_to_monitor(tmp_path):
    with pytest.warns(UserWarning, match=re.escape("every `training_step` of epoch 0 returned None (6 batches"
                                                   " skipped); there is nothing to monitor.")):
        trainer = _fit(tmp_path, AllNone(lr=0.0), EntropyMonitor(stages=("train",)), val=False, max_epochs=1)
    assert not any(key.startswith("entropy/") for key in trainer.callback_metrics)


# ----------------------------------------------------------------------------- manual optimization



@pytest.mark.parametrize("param_output", ["clone", "live"])
def test_vae_output_under_manual_optimization_with_two_optimizers(tmp_path, param_output):
    torch.manual_seed(0)
    model = ManualVAE(lr=0.2, param_output=param_output)
    trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=False, max_epochs=2)
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(model.train_epoch(1)))


class ManualPerSampleLoss(ManualVAE):
    """Manual optimization returning its loss per sample (B,), from the first batch or only from ``from_batch`` on."""

    def __init__(self, from_batch=0, one_element=False, **kwargs):
        super().__init__(**kwargs)
        self.from_batch, self.one_element = from_batch, one_element

    def training_step(self, batch, batch_idx):
        out = super().training_step(batch, batch_idx)
        if self.global_step // 2 >= self.from_batch:  # two optimizer steps per batch
            out["loss"] = out["loss"].reshape(1) if self.one_element else -out["elbo"].detach()
        return out


def test_a_loss_that_is_not_one_number_is_left_out_of_the_objective_check(tmp_path):
    torch.manual_seed(0)
    model = ManualPerSampleLoss(lr=0.2)
    with pytest.warns(UserWarning, match=re.escape("`loss` is a tensor of shape (4,), not one number, so the"
                                                   " objective check cannot read it")):
        trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=False, max_epochs=2)
    metrics = trainer.callback_metrics
    assert math.isnan(float(metrics["entropy/train/objective_is_elbo"]))
    monitor = trainer.callbacks[0]
    assert monitor.objective_check == (None, "the training steps' `loss` is a tensor of shape (4,), not one number")
    assert_logged_equal(metrics, "entropy/train", monitor_reference(model.train_epoch(1)))


def test_losses_of_shapes_one_and_scalar_mixed_are_read(tmp_path):
    torch.manual_seed(0)
    model = ManualPerSampleLoss(from_batch=3, one_element=True, lr=0.2)
    trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=False, max_epochs=2)
    assert float(trainer.callback_metrics["entropy/train/objective_is_elbo"]) == 1.0


def test_a_loss_that_stops_being_one_number_is_a_clear_error(tmp_path):
    torch.manual_seed(0)
    model = ManualPerSampleLoss(from_batch=3, lr=0.2)
    message = ("EntropyMonitor expected `loss` to be one number in every training batch, as in the stage's first"
               " batch, but got (), (4,).")
    with pytest.raises(ValueError, match=re.escape(message)):
        _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=False, max_epochs=1)


# ------------------------------------------------------------------ parameters in one flat storage
class FlatParameters(MonitorVAE):
    """Every parameter is a view into one flat storage, as FSDP lays them out; ``dec_logvar`` is returned as
    ``returned``: the parameter, its ``squeeze()``, or a plain tensor view of the flat storage (FSDP's forward)."""

    def __init__(self, returned, **kwargs):
        super().__init__(**kwargs)
        params = [p for p in self.parameters() if p is not self.dec_logvar] + [self.dec_logvar]  # not at offset 0
        self.flat = torch.zeros(sum(p.numel() for p in params))
        offset = 0
        for p in params:
            n = p.numel()
            with torch.no_grad():
                self.flat[offset:offset + n] = p.reshape(-1)
            p.data = self.flat[offset:offset + n].view_as(p)
            offset += n
        self.returned = returned

    def _returned(self, out):
        if self.returned == "param":
            out["dec_logvar"] = self.dec_logvar
        elif self.returned == "squeeze":
            out["dec_logvar"] = self.dec_logvar.reshape(1).squeeze()
        else:
            start = self.dec_logvar.storage_offset()
            out["dec_logvar"] = self.flat[start:start + 1].view(())
        if not self.return_elbo:
            del out["elbo"]
        return out


@pytest.mark.parametrize("returned", ["param", "squeeze", "flat view"])
def test_parameters_in_one_flat_storage(tmp_path, returned):
    torch.manual_seed(0)
    model = FlatParameters(returned, lr=0.5)
    storages = {p.untyped_storage().data_ptr() for p in model.parameters()}
    assert len(storages) == 1 and model.dec_logvar.storage_offset() > 0
    trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=False, max_epochs=2)
    entries = model.train_epoch(1)
    assert min(abs(float(e["dec_logvar_post"] - e["dec_logvar"])) for e in entries) > 0.01  # it moved each step
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(entries))


class _HandBack(torch.autograd.Function):
    """Hands back its input's values as a new tensor of the same memory, as a fused kernel returning the
    log-variance it used does: autograd makes the output a non-leaf that is not a view, yet an alias."""

    @staticmethod
    def forward(ctx, t):
        return t.detach()

    @staticmethod
    def backward(ctx, grad):
        return grad


class AliasFromFunction(MonitorVAE):
    """Returns ``dec_logvar`` as a view of a custom Function's non-leaf alias of the parameter."""

    def _returned(self, out):
        out = super()._returned(out)
        alias = _HandBack.apply(self.dec_logvar)
        assert alias.untyped_storage().data_ptr() == self.dec_logvar.untyped_storage().data_ptr()
        assert not alias.is_leaf and alias._base is None
        out["dec_logvar"] = alias.expand(self.data_dim)
        return out


def test_a_view_of_a_non_leaf_alias_of_a_parameter_is_read_as_the_step_used_it(tmp_path):
    """Any view is matched by its memory, whatever autograd says of its base: a view of a non-leaf can still share
    the parameter's memory (a custom Function's output), and the optimizer's in-place step must not leak in."""
    torch.manual_seed(0)
    model = AliasFromFunction(lr=0.5)
    trainer = _fit(tmp_path, model, EntropyMonitor(stages=("train",)), val=False, max_epochs=2)
    entries = model.train_epoch(1)
    assert min(abs(float(e["dec_logvar_post"] - e["dec_logvar"])) for e in entries) > 0.01  # it moved each step
    assert_logged_equal(trainer.callback_metrics, "entropy/train", monitor_reference(entries))


class FreedAfterStep(MonitorVAE):
    """Returns a view of a gathered copy whose storage is freed after backward, as FULL_SHARD FSDP does."""

    def _returned(self, out):
        self.gathered = self.dec_logvar.detach().clone().reshape(1)
        out["dec_logvar"] = self.gathered[0]
        return out

    def on_after_backward(self):
        self.gathered.untyped_storage().resize_(0)


class FreedTensorAfterStep(FreedAfterStep):
    """Returns the gathered tensor itself (not a view), as FSDP2's forward pass hands out its unsharded parameters."""

    def _returned(self, out):
        self.gathered = self.dec_logvar.detach().clone()
        out["dec_logvar"] = self.gathered
        return out


@pytest.mark.parametrize(("model", "where"), [(FreedAfterStep, "a view of"), (FreedTensorAfterStep, "in")])
def test_a_returned_tensor_in_a_freed_storage_raises_with_the_fix(tmp_path, model, where):
    message = (f"EntropyMonitor (on_train_batch_end of {model.__name__}): `dec_logvar` is {where} a storage that was"
               " freed after the step (a sharded parameter, as FSDP reshards after the forward and backward passes),"
               " so it cannot be read at the next logging step. Return a copy from your step:"
               ' `"dec_logvar": dec_logvar.detach().clone()`.')
    with pytest.raises(ValueError, match="^" + re.escape(message) + "$"):
        _fit(tmp_path, model(lr=0.1), EntropyMonitor(stages=("train",)), val=False)
