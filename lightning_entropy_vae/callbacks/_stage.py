"""One monitored stage, from a step's output to an immutable result: keep -> reduce -> result (private).

- :meth:`StageTracker.keep` (every batch, the hot path): the output is checked against the stage's layout from
  metadata only (the first batch fixes the layout through the functional parsers), returned parameters are
  swapped for the values the forward pass used (training only, :mod:`._live_params`), and references to its
  tensors are kept. No device work.
- :meth:`StageTracker.reduce` (at the logging cadence, at the epoch's end, or when the stash is full): the kept
  batches are stacked into one batch of N points (one ``cat`` per key; a value shared by a batch's points, such as
  a scalar ``dec_logvar``, becomes one row per point); one small read to the host finds the batches holding
  NaN/Inf (and reads the losses for the objective check); the finite batches go to the stage's metrics through
  their public ``update``, one call each.
- :meth:`StageTracker.window` (training, at a step log) and :meth:`StageTracker.result` (at the epoch's end) read
  the metrics: the window's entropy sum and ELBO as floats, the epoch's values as a :class:`StageResult`.

The training stage keeps two metric sets: the window since the last step log (rank-local, as Lightning's own step
metrics) and the epoch. A step log computes the window, merges it into the epoch (``Metric.merge_state``) and
resets it; batches after an epoch's last step log are merged into that epoch and carried, already counted, into
the next step log's window.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.callbacks._live_params import LiveParameters
from lightning_entropy_vae.callbacks._objective import MIN_BATCHES, ObjectiveCheck, ObjectiveVerdict
from lightning_entropy_vae.callbacks._step_outputs import StageLayout, normalize
from lightning_entropy_vae.functional._checks import VOCABULARY, first_nonfinite
from lightning_entropy_vae.metrics import ELBO, EntropySumELBO, PosteriorCollapse

#: Reduce early once this many batches are kept, or this many bytes of their tensors: a bound on the memory that
#: references to D-sized tensors (``x``, ``dec_mean``, a per-point ``dec_logvar``) hold.
MAX_PENDING = 256
MAX_PENDING_BYTES = 64 << 20
#: Log-variances the formulas exponentiate (sign of the exponent): a batch whose exp overflows is dropped like one
#: holding NaN/Inf, so the metrics never see a finite input with a non-finite result.
EXPONENTIATED = {"enc_logvar": 1.0, "dec_logvar": -1.0, "prior_logvar": -1.0}


@dataclass(frozen=True)
class StageResult:
    """A stage's epoch, reduced over processes: what the publishing functions turn into keys."""

    stage: str
    data_dim: int
    latent_shape: tuple[int, ...]
    #: entropy terms (``encoder``, ``prior``, ``decoder``, ``sum``, maybe ``sum_profiled``), nats per point
    sums: dict[str, Tensor]
    elbo: Tensor
    #: :meth:`PosteriorCollapse.compute`'s statistics per latent
    collapse: dict[str, Tensor]
    #: batches skipped (NaN/Inf, or a step that returned None), summed over processes
    skipped: Tensor
    #: is the training loss the beta = 1 ELBO? (training only; ``None`` for other stages)
    objective: ObjectiveVerdict | None
    #: processes that kept no batch of this epoch (their values are not in the result), of ``world_size``
    empty_ranks: int
    world_size: int


def _compute(metric: Any) -> Any:
    """``metric.compute()`` without TorchMetrics' warning for a metric that saw no update."""
    if metric.update_count:
        return metric.compute()
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*compute.*called before.*update.*")
        return metric.compute()


class StageTracker:
    """Keeps, reduces and reads one stage's batches (``train``, ``val``, ``val_1``, ``test``, ...).

    Args:
        name: the stage.
        criterion, threshold: the collapse criterion and its threshold.
        nan_strategy: ``"skip"`` drops and counts batches holding NaN/Inf, ``"error"`` raises at the reduction.
        live: the training stage's returned-parameter copies (``None`` for held-out stages).
        fixed_variance: whether the run's decoder variance is fixed (from the training stage, or a resumed run's
            checkpoint), ``None`` to read it from the first training batch (training) or not to profile it.
        objective: regress the returned losses on the batches' ELBO and KL (training).
    """

    def __init__(self, name: str, *, criterion: str, threshold: float | None, nan_strategy: str,
                 live: LiveParameters | None = None, fixed_variance: bool | None = None,
                 objective: bool = False) -> None:
        self.name = name
        self._criterion, self._threshold, self._nan_strategy = criterion, threshold, nan_strategy
        self._live = live
        #: whether the decoder variance is fixed (VAE-0, a plain MSE loss): read from the first training batch
        self.fixed_variance = fixed_variance
        self._track_objective = objective
        #: set by the first batch
        self.layout: StageLayout | None = None
        self._batches: list[dict[str, Any]] = []
        self._sizes: list[int] = []
        self._bytes = 0
        self._objective = ObjectiveCheck()
        self._verdict: ObjectiveVerdict | None = None
        self._dropped = self._skipped_none = 0

    @property
    def num_pending(self) -> int:
        """Batches kept since the last reduction."""
        return len(self._batches)

    @property
    def pending_batches(self) -> tuple[dict[str, Any], ...]:
        """What is kept of each batch since the last reduction (references)."""
        return tuple(self._batches)

    @property
    def dropped_batches(self) -> int:
        """Batches of this epoch left out for NaN/Inf (this process)."""
        return self._dropped

    @property
    def objective_rows(self) -> ObjectiveCheck:
        """The objective check's regression over the batches it holds (read-only use)."""
        return self._objective

    # ------------------------------------------------------------------------------------------- hot path
    def skip(self) -> None:
        """A batch whose step returned None (Lightning's "skip this batch")."""
        self._skipped_none += 1

    def keep(self, values: Mapping[str, Any], owner: Callable[[], str], loss_scale: float) -> None:
        """Keep references to a step's tensors (no device work); reduce them when the stash is full.

        ``owner()`` names the hook and module in an error message; ``loss_scale``: Lightning's accumulation factor,
        by which it divided the returned loss.
        """
        values = normalize(values, owner)  # duck-typed Gaussians as tensors, a Python-number dec_logvar as one
        if self.layout is None:
            self._start(values, owner)
        kw, size = self.layout.check(values, owner)
        if self._live is not None:  # also detaches (views, no kernel): kept tensors do not hold the autograd graph
            kw = self._live.restore(kw, owner)
        self._batches.append(kw)
        self._sizes.append(size)
        self._bytes += size * self.layout.bytes_per_point
        if len(self._batches) >= MAX_PENDING or self._bytes >= MAX_PENDING_BYTES:
            self.reduce(owner, loss_scale)

    def _start(self, values: Mapping[str, Any], owner: Callable[[], str]) -> None:
        """The stage's first batch fixes its layout (every rule of the vocabulary checked) and its metrics."""
        found_fixed = False
        if self._live is not None and self.fixed_variance is None:
            lv = values.get("dec_logvar")  # a detached learnable parameter (`.detach()`) is not a fixed variance
            self.fixed_variance = found_fixed = F.fixed_decoder_variance(lv) and self._live.parameter_of(lv) is None
        profiled = bool(self.fixed_variance)
        self.layout = StageLayout(values, owner(), need_loss=self._track_objective, need_residual=profiled)
        if found_fixed:
            rank_zero_warn(
                f"{owner()}: `dec_logvar` does not require grad, so the decoder variance is fixed (VAE-0, a"
                " squared-error loss; a BCE-trained model should return `dec_logits` or `dec_probs` instead of"
                " `dec_mean` and `dec_logvar`). The ELBO of such a model does not converge to the entropy sum;"
                " their gap stays 0.5*(D - R/sigma^2) per point, so EntropyConvergence's gate will not open. Also"
                " logging `sum_profiled`: the entropy sum at the optimal variance sigma^2* = mean squared residual,"
                " which a learned variance would reach."
            )
        first = values.get("enc_logvar", values.get("posterior"))
        first = first if isinstance(first, Tensor) else first.mean  # a posterior distribution's mean
        device, dtype = first.device, first.dtype
        # the tracker drops and counts NaN/Inf batches itself; an overflow the metrics meet is skipped silently
        # (nan_strategy="ignore"); processes are synchronised explicitly in result(), so compute() never syncs

        def pair() -> tuple[EntropySumELBO, ELBO]:
            return (EntropySumELBO(profile_decoder_variance=profiled, warn_fixed_variance=False,
                                   nan_strategy="ignore", sync_on_compute=False),
                    ELBO(nan_strategy="ignore", sync_on_compute=False))

        self._epoch = pair()
        self._collapse = PosteriorCollapse(self.layout.latent_dim, criterion=self._criterion,
                                           threshold=self._threshold, nan_strategy="ignore", sync_on_compute=False)
        windowed = self._live is not None
        self._windows = [pair() for _ in range(2)] if windowed else []
        self._carry: tuple[EntropySumELBO, ELBO] | None = None
        for m in self._metrics():
            m.to(device)
            if dtype == torch.float64:  # float64 steps (precision="64-true") keep float64 sums
                m.set_dtype(torch.float64)

    def _metrics(self) -> list[Any]:
        return [*self._epoch, self._collapse, *(m for pair in self._windows for m in pair)]

    # ------------------------------------------------------------------------------------------ reduction
    def reduce(self, owner: Callable[[], str], loss_scale: float = 1.0) -> None:
        """Update the metrics with the kept batches, one call each, leaving out those holding NaN/Inf."""
        if not self._batches:
            return
        if self._nan_strategy == "error":
            for kw in self._batches:  # a host sync per key: only at the cadence, and asked for
                key = first_nonfinite({k: v for k, v in kw.items() if k != "loss"})
                if key is not None:
                    raise ValueError(f"{owner()} got non-finite values (NaN or Inf) in `{key}` in a batch since the"
                                     " last logging step (nan_strategy='error').")
        with torch.no_grad():
            if self.layout.distributions:  # distribution objects: batch by batch, each metric skips NaN itself
                for kw in self._batches:
                    self._update(kw)
                self._objective_rows_of_distributions(loss_scale)
            else:
                self._reduce_stacked(loss_scale)
        self._batches, self._sizes, self._bytes = [], [], 0

    def _reduce_stacked(self, loss_scale: float) -> None:
        inputs = self._stack(self._batches, self._sizes)
        columns = self._objective_columns(inputs)
        finite, losses, columns = self._finite(inputs, columns)  # one small read to the host
        if losses is not None and columns:
            self._objective.eps = max(self._objective.eps, torch.finfo(self._batches[0]["loss"].dtype).eps)
            bernoulli = columns[2] if len(columns) > 2 else [None] * len(losses)
            for ok, loss, elbo, kl, bern, n in zip(finite, losses, columns[0], columns[1], bernoulli, self._sizes):
                if ok and math.isfinite(loss):
                    self._objective.add(-loss * loss_scale, elbo, kl, n,
                                        None if bern is None or not math.isfinite(bern) else bern)
        if not all(finite):
            self._dropped += finite.count(False)
            kept = [i for i, ok in enumerate(finite) if ok]
            batches, sizes = [self._batches[i] for i in kept], [self._sizes[i] for i in kept]
            inputs = self._stack(batches, sizes) if batches else None
        if inputs is not None:
            self._update(inputs)

    def _objective_rows_of_distributions(self, loss_scale: float) -> None:
        """The objective check's rows for batches of distribution objects: per batch the loss, the ELBO and the KL
        summed over its points, read to the host at once."""
        if not self._track_objective or "loss" not in self.layout.kept:
            return
        rows = []
        for kw in self._batches:
            vocabulary = {k: v for k, v in kw.items() if k in VOCABULARY}
            elbo = kw.get("elbo")
            elbo = F.elbo(**vocabulary, reduction="none") if elbo is None else elbo
            kl = F.gaussian_kl(**vocabulary, reduction="none")
            rows.append(torch.stack([kw["loss"].reshape(()).to(kl.dtype), elbo.sum().to(kl.dtype), kl.sum()]))
        self._objective.eps = max(self._objective.eps, torch.finfo(self._batches[0]["loss"].dtype).eps)
        for (loss, elbo, kl), n in zip(torch.stack(rows).tolist(), self._sizes):
            if math.isfinite(loss) and math.isfinite(elbo) and math.isfinite(kl):
                self._objective.add(-loss * loss_scale, elbo, kl, n)

    def _update(self, inputs: Any) -> None:
        entropy_sum, elbo = self._windows[0] if self._windows else self._epoch
        entropy_sum.update(inputs)
        elbo.update(inputs)
        self._collapse.update(inputs)

    def _stack(self, batches: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
        """The batches as one batch of N points (under no_grad)."""
        layout = self.layout
        stacked: dict[str, Any] = {}
        for key in layout.tensor_keys:
            axis = layout.batch_axis(key)
            values = [b[key] for b in batches]
            if axis is not None:
                stacked[key] = values[0] if len(values) == 1 else torch.cat(values, dim=axis)
                continue
            rows = torch.stack(values).reshape(len(values), -1)  # one value per batch: (K, k)
            if key == "dec_logvar" and layout.decoder_layout == "per_dim" and layout.has_elbo:
                # for the entropy a (D,) log-variance is its mean over the D dimensions: (K, 1), not (N, D)
                rows = rows.mean(-1, keepdim=True)
            stacked[key] = _per_point(rows, sizes)
        stacked["data_dim"] = layout.data_dim  # D, when neither x nor dec_mean is kept
        return stacked

    def _objective_columns(self, inputs: dict[str, Any]) -> tuple[Tensor, ...]:
        """Per batch, the ELBO and the KL summed over its points: what the loss is regressed on; until the objective
        has been judged, where ``x`` and ``dec_mean`` are kept, also the Bernoulli ELBO of ``dec_mean`` read as
        probabilities (a BCE-trained model's)."""
        if not self._track_objective or "loss" not in self.layout.kept:
            return ()
        vocabulary = {k: v for k, v in inputs.items() if k in VOCABULARY}
        elbo = inputs.get("elbo")
        if elbo is None:
            elbo = F.elbo(**vocabulary, reduction="none")
        kl = F.gaussian_kl(**vocabulary, reduction="none")
        x, dec_mean = inputs.get("x"), inputs.get("dec_mean")
        if (self._verdict is not None and self._verdict.is_elbo is not None) or not (
                isinstance(x, Tensor) and isinstance(dec_mean, Tensor) and x.shape == dec_mean.shape):
            return _per_batch(elbo, self._sizes), _per_batch(kl, self._sizes)
        log_lik = F.bernoulli_log_likelihood(x=x, probs=dec_mean)
        bernoulli = log_lik - kl.to(log_lik.dtype)
        return _per_batch(elbo, self._sizes), _per_batch(kl, self._sizes), _per_batch(bernoulli, self._sizes)

    def _finite(self, stacked: dict[str, Any], columns: tuple[Tensor, ...]
                ) -> tuple[list[bool], list[float] | None, list[list[float]]]:
        """Which kept batches hold only finite inputs, their losses if kept, and the per-batch ``columns``: one read
        to the host."""
        probe = self._probe(stacked)
        parts = [probe]
        has_loss = "loss" in self.layout.kept
        if has_loss:
            parts.append(torch.stack([b["loss"].reshape(()) for b in self._batches]).to(probe.dtype))
        parts += [c.to(probe.dtype) for c in columns]
        values = torch.cat(parts).tolist() if len(parts) > 1 else probe.tolist()
        k = len(self._batches)
        rows = [values[i * k:(i + 1) * k] for i in range(len(parts))]
        finite = [v - v == 0.0 for v in rows[0]]  # NaN and +-Inf give NaN
        return finite, (rows[1] if has_loss else None), rows[1 + has_loss:]

    def _probe(self, stacked: dict[str, Any]) -> Tensor:
        """Per batch (K,): a sum that is NaN/Inf iff some input of the batch is (or overflows in exp).

        Each key adds its sum over the batch's points, and an exponentiated log-variance also the exp of its maximum
        (of its minimum for ``exp(-t)``): exp is monotone, so it overflows iff some element's exp does, and only K
        values are exponentiated. NaN propagates through sums, maxima and exp alike.
        """
        total = None
        for key, t in stacked.items():
            if not isinstance(t, Tensor):  # data_dim
                continue
            if t.dtype in (torch.float16, torch.bfloat16):  # exp and sums as the metrics take them: in float32
                t = t.float()
            axis = self.layout.batch_axis(key) or 0
            points = (t.movedim(axis, 0) if axis else t).reshape(t.shape[axis], -1)  # (N, everything else)
            sign = EXPONENTIATED.get(key)
            columns = []
            for rows in _batch_rows(points, self._sizes):  # (batches, size * everything else) per run
                column = rows.sum(-1)
                if sign is not None:
                    column = column + (rows.amax(-1).exp() if sign > 0 else torch.exp(-rows.amin(-1)))
                columns.append(column)
            column = columns[0] if len(columns) == 1 else torch.cat(columns)
            total = column if total is None else total + column
        return total

    # ---------------------------------------------------------------------------------------------- reads
    def window(self) -> tuple[float, float]:
        """Entropy sum and ELBO over the batches since the last step log (rank-local), as floats; restarts it."""
        if self.layout is None:
            return math.nan, math.nan
        self._merge_window()
        entropy_sum, elbo = self._windows[0]
        if self._carry is not None:
            entropy_sum.merge_state(self._carry[0])
            elbo.merge_state(self._carry[1])
            self._carry = None
        values = torch.stack([_compute(entropy_sum)["sum"], _compute(elbo)]).tolist()
        entropy_sum.reset()
        elbo.reset()
        return values[0], values[1]

    def result(self, strategy: Any) -> StageResult:
        """The epoch's values over every process (collectives: every rank calls this at the same point).

        One all-reduce counts the processes that have the stage's metrics and the skipped batches; the metrics then
        sync their states only if every process has them (a process whose every batch returned None has no layout,
        so it cannot take part in their gathers).
        """
        has = self.layout is not None
        counts = strategy.reduce(torch.tensor([float(has), float(self._dropped + self._skipped_none)],
                                              device=strategy.root_device), reduce_op="sum")
        world = int(getattr(strategy, "world_size", 1) or 1)
        holding, skipped = int(counts[0].item()), counts[1]
        verdict = self._judge_objective()
        if self.layout is None:
            return StageResult(self.name, 0, (), {}, torch.tensor(math.nan), {}, skipped.cpu(), verdict,
                               world - holding, world)
        if self._windows:
            self._merge_window()
        sync = world > 1 and holding == world
        values = []
        for m in (*self._epoch, self._collapse):
            if sync:  # gather the states; compute() restores this process's own when it returns
                m.sync(should_sync=True)
            values.append(_compute(m))
        sums, elbo, collapse = values
        if self._windows:  # the window's batches stay in the next step log's window, already counted in this epoch
            window, spare = self._windows
            if self._carry is not None:
                window[0].merge_state(self._carry[0])
                window[1].merge_state(self._carry[1])
            self._carry = window
            for m in spare:
                m.reset()
            self._windows = [spare, window]
        return StageResult(self.name, self.layout.data_dim, self.layout.latent_shape, sums, elbo, collapse,
                           skipped.to(elbo.dtype), verdict, world - holding, world)

    def _merge_window(self) -> None:
        entropy_sum, elbo = self._windows[0]
        self._epoch[0].merge_state(entropy_sum)
        self._epoch[1].merge_state(elbo)

    def _judge_objective(self) -> ObjectiveVerdict | None:
        if not self._track_objective:
            return None
        if self.layout is not None and "loss" not in self.layout.kept:
            self._verdict = ObjectiveVerdict(None, "the training steps return no `loss`")
        elif self.layout is not None:
            self._verdict = self._objective.verdict()
        return self._verdict

    def start_epoch(self) -> None:
        """A new epoch: metrics and counts start empty. Training keeps the batches after the last step log in the
        next window. The objective check judges each epoch's batches; after an epoch of fewer than
        ``MIN_BATCHES`` it keeps the most recent ones, so that short epochs are judged on the last few batches."""
        self._dropped = self._skipped_none = 0
        own = self._objective.batches - self._objective.carried
        self._objective = ObjectiveCheck() if own >= MIN_BATCHES else self._objective.recent(MIN_BATCHES - 1)
        if self.layout is None:
            return
        self._batches, self._sizes, self._bytes = [], [], 0
        for m in (*self._epoch, self._collapse):
            m.reset()
        if self._live is None:
            self._carry = None
            for pair in self._windows:
                for m in pair:
                    m.reset()


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """``sizes`` as runs ``(batches, size)`` of equal batch sizes: usually one, or two with a short last batch."""
    runs: list[list[int]] = []
    for size in sizes:
        if runs and runs[-1][1] == size:
            runs[-1][0] += 1
        else:
            runs.append([1, size])
    return [(count, size) for count, size in runs]


def _batch_rows(points: Tensor, sizes: list[int]) -> list[Tensor]:
    """A per-point table (N, m) as one (batches, size * m) view per run of equal batch sizes."""
    out, start = [], 0
    for count, size in _runs(sizes):
        out.append(points[start:start + count * size].reshape(count, -1))
        start += count * size
    return out


def _per_batch(per_point: Tensor, sizes: list[int]) -> Tensor:
    """Sum a per-point vector (N,) within each batch: (K,)."""
    out = [rows.sum(-1) for rows in _batch_rows(per_point, sizes)]
    return out[0] if len(out) == 1 else torch.cat(out)


def _per_point(per_batch: Tensor, sizes: list[int]) -> Tensor:
    """Repeat each batch's row of ``per_batch`` (K, ...) for each of the batch's points: (N, ...)."""
    out, start = [], 0
    for count, size in _runs(sizes):
        out.append(per_batch[start:start + count].repeat_interleave(size, dim=0))
        start += count
    return out[0] if len(out) == 1 else torch.cat(out)
