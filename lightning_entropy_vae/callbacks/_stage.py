"""One monitored stage, from a step's output to an immutable result: keep -> reduce -> result (private).

- :meth:`StageTracker.keep` (every batch, the hot path): the output is checked against the stage's layout from
  metadata only (the first batch fixes the layout through the functional parsers), returned parameters are
  swapped for the values the forward pass used (training only, :mod:`._live_params`), and references to its
  tensors are kept. No device work.
- :meth:`StageTracker.window` (training, at a logging step): the ELBO and the entropy sum of the batches kept since
  the last logging step, from a stack of the tensors the two formulas read; the batches stay kept.
- :meth:`StageTracker.reduce` (at the epoch's end, when the stash is full, or at a logging step under
  ``nan_strategy="error"``): the kept batches are stacked into one batch of N points (one ``cat`` per key; a value
  shared by a batch's points, such as a scalar ``dec_logvar``, becomes one row per point). For training, per batch
  its ELBO, entropy sum and KL per latent, summed over its points, are computed on the stack. One small read to the
  host brings those, the losses and a probe that finds the batches holding NaN/Inf; the finite batches go to the
  stage's metrics through their public ``update``, one call each, and (training) their per-batch sums to the gap
  window, the objective check (:mod:`._objective`) and, for batches no logging step counted yet, the step window.
- :meth:`StageTracker.result` (at the epoch's end) reads the epoch's values over every process as a
  :class:`StageResult`.

The step window, the gap window (the last ``gap_window`` batches' gaps, whose batch-means standard error the
stopping gate reads) and the objective check's rows run across epoch boundaries: an epoch of one batch still
fills them.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from lightning_utilities.core.rank_zero import rank_zero_warn
from torch import Tensor

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.callbacks._live_params import LiveParameters
from lightning_entropy_vae.callbacks._objective import ObjectiveCheck, ObjectiveVerdict
from lightning_entropy_vae.callbacks._step_outputs import StageLayout, normalize
from lightning_entropy_vae.functional._checks import VOCABULARY, first_nonfinite
from lightning_entropy_vae.functional.batch_means import _batch_means_compute, _batch_means_update
from lightning_entropy_vae.metrics import ELBO, EntropySumELBO, PosteriorCollapse

#: Reduce early once this many batches are kept, or this many bytes of their tensors: a bound on the memory that
#: references to D-sized tensors (``x``, ``dec_mean``, a per-point ``dec_logvar``) hold.
MAX_PENDING = 256
MAX_PENDING_BYTES = 64 << 20
#: Log-variances the formulas exponentiate (sign of the exponent): a batch whose exp overflows is dropped like one
#: holding NaN/Inf, so the metrics never see a finite input with a non-finite result.
EXPONENTIATED = {"enc_logvar": 1.0, "dec_logvar": -1.0, "prior_logvar": -1.0}
#: Training batches of a run whose Bernoulli ELBO of ``dec_mean`` is computed for the objective check's BCE diagnosis
#: (the rows a verdict reads; it is said once)
BERNOULLI_BATCHES = 64
#: Groups of the gap window's batch-means standard error (:func:`~lightning_entropy_vae.functional.batch_means`).
GAP_GROUPS = 10


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
    #: the points-weighted mean gap ELBO - entropy sum over the last ``gap_window`` training batches (nats per
    #: point), its batch-means standard error, over every process (NaN until the window is full), and the data
    #: dimension D (training only)
    gap_window: tuple[float, float, int] | None
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
        objective: regress the returned losses on the batches' ELBO and KL, and keep the window of per-batch gaps
            (training).
        gap_window: the training batches whose gaps the window keeps (across epochs).
        state: what :meth:`state` returned in the run being resumed (the gap window, the objective check's rows).
    """

    def __init__(self, name: str, *, criterion: str, threshold: float | None, nan_strategy: str,
                 live: LiveParameters | None = None, fixed_variance: bool | None = None,
                 objective: bool = False, gap_window: int = 32, state: Mapping[str, Any] | None = None) -> None:
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
        self._counted = 0  # kept batches (the first ones) already in the step window
        self._objective = ObjectiveCheck()
        self._verdict: ObjectiveVerdict | None = None
        self._dropped = self._skipped_none = 0
        self._loss_scale = 1.0  # the kept batches' accumulation factor
        self._bernoulli_batches = 0  # batches whose Bernoulli ELBO went to the objective check
        #: the finite training batches since the last step log: their ELBO and entropy sum summed, and their points
        self._window: list[float] = [0.0, 0.0, 0]
        #: per finite training batch, oldest first: (its ELBO minus its entropy sum, summed over its points; points)
        self._gaps: deque[tuple[float, int]] | None = deque(maxlen=gap_window) if objective else None
        self._state_dim = 0  # D of a resumed run's window, until its first batch
        if state and objective:
            self._gaps.extend((float(g), int(n)) for g, n in state.get("gaps", []))
            self._state_dim = int(state.get("data_dim", 0))
            if state.get("objective"):
                self._objective.load_state_dict(state["objective"])

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

    def state(self) -> dict[str, Any]:
        """What a resumed run continues from (plain types): the gap window and the objective check's rows. A
        checkpoint written mid-epoch reduces the kept batches first, so that the windows hold them."""
        if self._gaps is None:
            return {}
        if self._batches:
            self.reduce(lambda: "EntropyMonitor (saving a checkpoint)", self._loss_scale)
        return {"gaps": [list(row) for row in self._gaps], "objective": self._objective.state_dict(),
                "data_dim": self.layout.data_dim if self.layout is not None else self._state_dim}

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
        self._loss_scale = loss_scale
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
        if self.layout.unread_loss is not None:
            rank_zero_warn(
                f"{owner()}: `loss` is {self.layout.unread_loss}, not one number, so the objective check cannot read"
                " it: `objective_is_elbo` stays NaN (cannot tell), and EntropyConvergence counts no epoch unless given"
                " require_elbo_objective=False. Return the training loss as a scalar tensor under `loss`."
            )
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
        for m in self._metrics():
            m.to(device)
            if dtype == torch.float64:  # float64 steps (precision="64-true") keep float64 sums
                m.set_dtype(torch.float64)

    def _metrics(self) -> list[Any]:
        return [*self._epoch, self._collapse]

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
        self._batches, self._sizes, self._bytes, self._counted = [], [], 0, 0

    def _reduce_stacked(self, loss_scale: float) -> None:
        inputs = self._stack(self._batches, self._sizes)
        columns = self._per_batch_columns(inputs)
        finite, losses, columns = self._finite(inputs, columns)  # one small read to the host
        if columns:
            self._add_rows(finite, losses, columns, loss_scale)
        if not all(finite):
            self._dropped += finite.count(False)
            kept = [i for i, ok in enumerate(finite) if ok]
            batches, sizes = [self._batches[i] for i in kept], [self._sizes[i] for i in kept]
            inputs = self._stack(batches, sizes) if batches else None
        if inputs is not None:
            self._update(inputs)

    def _add_rows(self, finite: list[bool], losses: list[float] | None, columns: dict[str, list[Any]],
                  loss_scale: float) -> None:
        """The finite batches' gaps into the window, and their rows into the objective check (with a finite loss)."""
        if losses is not None:
            self._objective.eps = max(self._objective.eps, torch.finfo(self._batches[0]["loss"].dtype).eps)
        elbos, entropy_sums, sizes = columns["elbo"], columns["entropy_sum"], self._sizes
        gaps, rows = [], []  # the batches that go into the gap window and the objective check
        for k, (ok, n) in enumerate(zip(finite, sizes)):
            elbo, entropy_sum = elbos[k], entropy_sums[k]
            counted = math.isfinite(elbo - entropy_sum)
            if counted and k >= self._counted:  # not yet in the step window, which reads only these two sums
                self._window[0] += elbo
                self._window[1] += entropy_sum
                self._window[2] += n
            if not ok or not counted:
                continue
            gaps.append(k)
            if losses is not None and math.isfinite(losses[k]):
                rows.append(k)
        # both windows keep their most recent rows: only the last ones added here can stay in them
        self._gaps.extend((elbos[k] - entropy_sums[k], sizes[k]) for k in gaps[-self._gaps.maxlen:])
        bernoulli = columns.get("bernoulli")
        as_computed = columns.get("elbo_as_computed", elbos)
        for k in rows[-self._objective.window:]:
            bern = None if bernoulli is None or not math.isfinite(bernoulli[k]) else bernoulli[k]
            elbo_read = as_computed[k] if math.isfinite(as_computed[k]) else elbos[k]  # a float16 sum may overflow
            self._objective.add(-losses[k] * loss_scale, sizes[k], elbo_read, columns["kl"][k], bern)

    def _objective_rows_of_distributions(self, loss_scale: float) -> None:
        """The gaps and objective rows of batches of distribution objects: per batch the loss, the ELBO, the entropy
        sum and the KL per latent summed over its points, read to the host at once."""
        if not self._track_objective:
            return
        has_loss = "loss" in self.layout.kept
        rows, kls = [], []
        losses = _stacked_losses(self._batches) if has_loss else None
        for i, kw in enumerate(self._batches):
            vocabulary = {k: v for k, v in kw.items() if k in VOCABULARY}
            elbo = kw.get("elbo")
            elbo = F.elbo(**vocabulary, reduction="none") if elbo is None else elbo
            posterior = kw.get("posterior")
            diagonal = posterior is None or isinstance(posterior, torch.distributions.Normal) or (
                isinstance(posterior, torch.distributions.Independent)
                and isinstance(posterior.base_dist, torch.distributions.Normal))
            kl = (F.latent_kl(**vocabulary, reduction="none").sum(0) if diagonal
                  else F.gaussian_kl(**vocabulary, reduction="sum").reshape(1))  # the total KL as one column
            loss = losses[i].to(kl.dtype) if has_loss else torch.tensor(math.nan, dtype=kl.dtype)
            rows.append(torch.stack([loss, elbo.sum().to(kl.dtype), F.entropy_sum(**vocabulary, reduction="sum")
                                     .to(kl.dtype)]))
            kls.append(kl)
        table, kl_rows = torch.stack(rows).tolist(), [k.tolist() for k in kls]
        finite = [all(math.isfinite(v) for v in (elbo, entropy_sum)) and all(math.isfinite(v) for v in kl)
                  for (_, elbo, entropy_sum), kl in zip(table, kl_rows)]
        columns = {"elbo": [r[1] for r in table], "entropy_sum": [r[2] for r in table], "kl": kl_rows}
        self._add_rows(finite, [r[0] for r in table] if has_loss else None, columns, loss_scale)

    def _update(self, inputs: Any) -> None:
        entropy_sum, elbo = self._epoch
        entropy_sum.update(inputs)
        elbo.update(inputs)
        self._collapse.update(inputs)

    def _stack(self, batches: list[dict[str, Any]], sizes: list[int], keys: tuple[str, ...] | None = None
               ) -> dict[str, Any]:
        """The batches as one batch of N points (under no_grad): every kept tensor, or those of ``keys``."""
        layout = self.layout
        stacked: dict[str, Any] = {}
        for key in layout.tensor_keys if keys is None else keys:
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

    def _per_batch_columns(self, inputs: dict[str, Any]) -> dict[str, Tensor]:
        """Per training batch, summed over its points: the ELBO and the entropy sum (the gap window), the KL per
        latent (the objective check regresses the loss on them) and, until the objective has been judged, where
        ``x`` and ``dec_mean`` are kept, the Bernoulli ELBO of ``dec_mean`` read as probabilities (a BCE-trained
        model's)."""
        if not self._track_objective:
            return {}
        vocabulary = {k: v for k, v in inputs.items() if k in VOCABULARY}
        widened = _widened(vocabulary)
        columns = self._gap_columns(widened, self._sizes)
        if widened is not vocabulary:  # float16/bfloat16 steps: the objective check reads the ELBO as the loss was
            # computed, summed in the steps' dtype (its rounding is the loss's); the gaps read the float32 sums
            columns["elbo_as_computed"] = _per_batch(_elbo_per_point(vocabulary), self._sizes)
        kl = F.latent_kl(**vocabulary, reduction="none")  # (N, H): tensors are diagonal Gaussians
        columns["kl"] = _per_batch(kl, self._sizes)
        x, dec_mean = inputs.get("x"), inputs.get("dec_mean")
        if ("loss" in self.layout.kept and self._bernoulli_batches < BERNOULLI_BATCHES
                and (self._verdict is None or self._verdict.is_elbo is None)
                and isinstance(x, Tensor) and isinstance(dec_mean, Tensor) and x.shape == dec_mean.shape):
            log_lik = F.bernoulli_log_likelihood(x=x, probs=dec_mean)
            columns["bernoulli"] = _per_batch(log_lik - kl.sum(-1).to(log_lik.dtype), self._sizes)
            self._bernoulli_batches += len(self._sizes)
        return columns

    @staticmethod
    def _gap_columns(vocabulary: dict[str, Any], sizes: list[int]) -> dict[str, Tensor]:
        """Per batch (K,), summed over its points: the ELBO (returned, or from the pieces) and the entropy sum."""
        entropy_sum = F.entropy_sum(**vocabulary, reduction="none")  # the vocabulary holds data_dim
        return {"elbo": _per_batch(_elbo_per_point(vocabulary), sizes), "entropy_sum": _per_batch(entropy_sum, sizes)}

    def _finite(self, stacked: dict[str, Any], columns: dict[str, Tensor]
                ) -> tuple[list[bool], list[float] | None, dict[str, list[Any]]]:
        """Which kept batches hold only finite inputs, their losses if kept, and the per-batch ``columns`` (a list
        per batch for a 2-d column): one read to the host."""
        probe = self._probe(stacked)
        k = len(self._batches)
        has_loss = "loss" in self.layout.kept
        parts = [probe]
        if has_loss:
            parts.append(_stacked_losses(self._batches).to(probe.dtype))
        parts += [c.reshape(-1).to(probe.dtype) for c in columns.values()]
        values = torch.cat(parts).tolist() if len(parts) > 1 else probe.tolist()
        finite = [v - v == 0.0 for v in values[:k]]  # NaN and +-Inf give NaN
        losses = values[k:2 * k] if has_loss else None
        out, start = {}, k * (1 + has_loss)
        for name, c in columns.items():
            width = c.numel() // k
            flat = values[start:start + k * width]
            out[name] = flat if c.dim() == 1 else [flat[i * width:(i + 1) * width] for i in range(k)]
            start += k * width
        return finite, losses, out

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
    def window(self, owner: Callable[[], str] | None = None, loss_scale: float = 1.0) -> tuple[float, float]:
        """Entropy sum and ELBO over the finite training batches since the last step log (rank-local, from their
        per-batch sums), nats per point; restarts the window.

        The kept batches stay kept (the metrics, the gap window and the objective check take them at the next
        :meth:`reduce`): only the keys the two formulas read are stacked, and one small read brings the two sums
        over the batches not yet in a window; where that is NaN/Inf, their per-batch sums find the batches to leave
        out (a batch whose ELBO or entropy sum is NaN/Inf; the epoch's reduction also leaves out a batch with some
        other non-finite input, such as ``enc_mean``, which the two sums do not read). With ``nan_strategy="error"``
        (which must fail within a logging step of a bad batch) or batches of distribution objects, everything kept is
        reduced.
        """
        if self._nan_strategy == "error" or (self.layout is not None and self.layout.distributions):
            self.reduce(owner or (lambda: f"EntropyMonitor ({self.name})"), loss_scale)
        start = self._counted
        if start < len(self._batches):
            sizes = self._sizes[start:]
            with torch.no_grad():
                stacked = self._stack(self._batches[start:], sizes, self._window_keys())
                vocabulary = _widened({k: v for k, v in stacked.items() if k in VOCABULARY})
                elbo = vocabulary.get("elbo")
                elbo = F.elbo(**vocabulary, reduction="sum") if elbo is None else elbo.sum()
                entropy_sum = F.entropy_sum(**vocabulary, reduction="sum")
                dtype = torch.promote_types(elbo.dtype, entropy_sum.dtype)
                rows = [(*torch.stack([elbo.to(dtype), entropy_sum.to(dtype)]).tolist(), sum(sizes))]  # one read
                if not math.isfinite(rows[0][0] - rows[0][1]):  # which batches? their sums, to leave those out
                    columns = self._gap_columns(vocabulary, sizes)
                    rows = zip(*torch.stack([columns["elbo"].to(dtype), columns["entropy_sum"].to(dtype)]).tolist(),
                               sizes)
            for elbo_k, entropy_sum_k, n in rows:
                if math.isfinite(elbo_k - entropy_sum_k):
                    self._window[0] += elbo_k
                    self._window[1] += entropy_sum_k
                    self._window[2] += n
            self._counted = len(self._batches)
        elbo, entropy_sum, points = self._window
        self._window = [0.0, 0.0, 0]
        return (entropy_sum / points, elbo / points) if points else (math.nan, math.nan)

    def _window_keys(self) -> tuple[str, ...]:
        """The kept tensors the window's ELBO and entropy sum read: all but ``enc_mean`` when the steps return
        ``elbo`` (the encoder entropy reads only the log-variance)."""
        layout = self.layout
        if layout.has_elbo:
            return tuple(k for k in layout.tensor_keys if k != "enc_mean")
        return layout.tensor_keys

    def result(self, strategy: Any) -> StageResult:
        """The epoch's values over every process (collectives: every rank calls this at the same point).

        One all-reduce counts the processes that have the stage's metrics and the skipped batches and, for training,
        adds up the gap window's group totals (the processes' batches of the same steps fall into the same groups);
        the metrics then sync their states only if every process has them (a process whose every batch returned
        None has no layout, so it cannot take part in their gathers).
        """
        has = self.layout is not None
        local = [float(has), float(self._dropped + self._skipped_none)]
        if self._gaps is not None:
            local += self._gap_groups()
        counts = strategy.reduce(torch.tensor(local, dtype=torch.float64 if strategy.root_device.type != "mps"
                                              else torch.float32, device=strategy.root_device), reduce_op="sum")
        world = int(getattr(strategy, "world_size", 1) or 1)
        skipped, counts = counts[1].float(), counts.cpu()  # the one read to the host
        holding = int(counts[0].item())
        gap_window = None if self._gaps is None else (
            *self._gap_window(counts[2:].double(), world), self.layout.data_dim if has else self._state_dim)
        verdict = self._judge_objective()
        if self.layout is None:
            return StageResult(self.name, 0, (), {}, torch.tensor(math.nan), {}, skipped.cpu(), verdict, gap_window,
                               world - holding, world)
        sync = world > 1 and holding == world
        values = []
        for m in (*self._epoch, self._collapse):
            if sync:  # gather the states; compute() restores this process's own when it returns
                m.sync(should_sync=True)
            values.append(_compute(m))
        sums, elbo, collapse = values
        return StageResult(self.name, self.layout.data_dim, self.layout.latent_shape, sums, elbo, collapse,
                           skipped.to(elbo.dtype), verdict, gap_window, world - holding, world)

    def _gap_groups(self) -> list[float]:
        """``[full, totals (GAP_GROUPS), points (GAP_GROUPS)]`` of this process's gap window: ``full`` is 1 when the
        window holds ``gap_window`` batches (else every entry is 0)."""
        if len(self._gaps) < (self._gaps.maxlen or 0) or len(self._gaps) < GAP_GROUPS:
            return [0.0] * (1 + 2 * GAP_GROUPS)
        sums = torch.tensor([g for g, _ in self._gaps], dtype=torch.float64)
        points = torch.tensor([n for _, n in self._gaps], dtype=torch.float64)
        totals, sizes = _batch_means_update(sums / points, points, GAP_GROUPS)
        return [1.0, *totals.tolist(), *sizes.tolist()]

    @staticmethod
    def _gap_window(reduced: Tensor, world: int) -> tuple[float, float]:
        """The window's mean gap and its standard error over every process, NaN unless every window is full."""
        if int(reduced[0].item()) != world:
            return math.nan, math.nan
        mean, se = _batch_means_compute(reduced[1:1 + GAP_GROUPS], reduced[1 + GAP_GROUPS:])
        return float(mean), float(se)

    def _judge_objective(self) -> ObjectiveVerdict | None:
        if not self._track_objective:
            return None
        if self.layout is not None and self.layout.unread_loss is not None:
            self._verdict = ObjectiveVerdict(None, f"the training steps' `loss` is {self.layout.unread_loss}, not one"
                                                   " number")
        elif self.layout is not None and "loss" not in self.layout.kept:
            self._verdict = ObjectiveVerdict(None, "the training steps return no `loss`")
        elif self.layout is not None or self._objective.batches:  # a resumed run's rows before its first batch
            self._verdict = self._objective.verdict()
        return self._verdict

    def start_epoch(self) -> None:
        """A new epoch: metrics and counts start empty. The step window (the batches since the last step log), the
        gap window and the objective check's rows run on across epochs."""
        self._dropped = self._skipped_none = 0
        if self.layout is None:
            return
        self._batches, self._sizes, self._bytes, self._counted = [], [], 0, 0
        for m in (*self._epoch, self._collapse):
            m.reset()


def _elbo_per_point(vocabulary: dict[str, Any]) -> Tensor:
    """The returned ``elbo`` (N,), or the ELBO computed from the pieces."""
    elbo = vocabulary.get("elbo")
    return F.elbo(**vocabulary, reduction="none") if elbo is None else elbo


def _widened(vocabulary: dict[str, Any]) -> dict[str, Any]:
    """float16/bfloat16 tensors as float32, so that sums over a window or a batch are not rounded at their size (a
    bfloat16 sum of 6,400 ELBOs near -1,000 is only good to 4,096 nats), as the probe takes them."""
    if not any(isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16) for v in vocabulary.values()):
        return vocabulary
    return {k: v.float() if isinstance(v, Tensor) and v.dtype in (torch.float16, torch.bfloat16) else v
            for k, v in vocabulary.items()}


def _stacked_losses(batches: list[dict[str, Any]]) -> Tensor:
    """The batches' one-element losses as one (K,) tensor: one ``stack`` where their shapes agree."""
    losses = [b["loss"] for b in batches]
    try:
        return torch.stack(losses).reshape(len(losses))
    except (RuntimeError, TypeError):  # shapes () and (1,) mixed, or some loss is not one number
        if all(isinstance(loss, Tensor) and loss.numel() == 1 for loss in losses):
            return torch.stack([loss.reshape(()) for loss in losses])
        got = sorted({str(tuple(loss.shape)) if isinstance(loss, Tensor) else type(loss).__name__ for loss in losses})
        raise ValueError("EntropyMonitor expected `loss` to be one number in every training batch, as in the stage's"
                         f" first batch, but got {', '.join(got)}.") from None


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """``sizes`` as runs ``(batches, size)`` of equal batch sizes: usually one, or two with a short last batch."""
    if not sizes:
        return []
    k, first = len(sizes), sizes[0]
    equal = sizes.count(first)  # counted in C: the usual cases need no loop
    if equal == k:
        return [(k, first)]
    if equal == k - 1 and sizes[-1] != first:
        return [(k - 1, first), (1, sizes[-1])]
    return [(len(list(run)), size) for size, run in itertools.groupby(sizes)]


def _batch_rows(points: Tensor, sizes: list[int]) -> list[Tensor]:
    """A per-point table (N, m) as one (batches, size * m) view per run of equal batch sizes."""
    out, start = [], 0
    for count, size in _runs(sizes):
        out.append(points[start:start + count * size].reshape(count, -1))
        start += count * size
    return out


def _per_batch(per_point: Tensor, sizes: list[int]) -> Tensor:
    """Sum a per-point table (N, ...) within each batch: (K, ...)."""
    out, start = [], 0
    for count, size in _runs(sizes):
        out.append(per_point[start:start + count * size].reshape(count, size, *per_point.shape[1:]).sum(1))
        start += count * size
    return out[0] if len(out) == 1 else torch.cat(out)


def _per_point(per_batch: Tensor, sizes: list[int]) -> Tensor:
    """Repeat each batch's row of ``per_batch`` (K, ...) for each of the batch's points: (N, ...)."""
    out, start = [], 0
    for count, size in _runs(sizes):
        out.append(per_batch[start:start + count].repeat_interleave(size, dim=0))
        start += count
    return out[0] if len(out) == 1 else torch.cat(out)
