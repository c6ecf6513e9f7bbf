"""Reading a step's output, and the layout every batch of a stage is checked against (private).

The stage's first batch goes through the functional parsers (every shape and dtype rule of the
vocabulary). It fixes a :class:`StageLayout`: the keys, and each tensor's shape with the batch size
left open. Every later batch is checked against it from metadata only (types, shapes, dtypes; no
device work), so a batch that disagrees gets the same clear ``ValueError`` as a first batch would.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any

from torch import Tensor
from torch.distributions import Distribution

from lightning_entropy_vae.functional import _inputs as _in
from lightning_entropy_vae.functional._checks import (
    DISCRETE_DECODER_KEYS,
    EXAMPLE_RETURN,
    STEP_KEYS,
    as_float_tensor,
    check_batch,
    missing_inputs_error,
)

#: Keys that are distribution objects, not tensors.
DISTRIBUTION_KEYS = ("posterior", "prior", "likelihood")


def owner_of(hook: str, pl_module: Any) -> str:
    return f"EntropyMonitor ({hook} of {type(pl_module).__name__})"


def read_output(values: Any, hook: str, stage: str, pl_module: Any, got: str | None = None) -> Mapping[str, Any] | None:
    """The step's output as a mapping, ``None`` for a skipped batch.

    A ``training_step`` that returns ``None`` (Lightning's "skip this batch") reaches the batch-end hook as
    an empty dict under automatic and manual optimization alike.
    """
    if got is None and (type(values) is dict or isinstance(values, Mapping)):
        return values if len(values) else None
    if got is None and values is None:
        return None
    kind = stage.split("_")[0]  # val_1 -> val
    step = {"train": "training_step", "test": "test_step"}.get(kind, "validation_step")
    skip = {"train": "", "test": "\nor pass EntropyMonitor(stages=('train', 'val')) to skip the test stage."}
    raise ValueError(
        f"{owner_of(hook, pl_module)} expected `{step}` to return a dict (or VAEOutput) with the keys `enc_mean`,"
        f" `enc_logvar`, `dec_logvar`, `dec_mean`, `x` and optionally `elbo`, `prior_logvar` (a Bernoulli decoder"
        f" returns `dec_logits` instead of `dec_mean` and `dec_logvar`), but got {got or 'a ' + type(values).__name__}."
        " Return them from the step, for example:\n" + EXAMPLE_RETURN
        + skip.get(kind, "\nor pass EntropyMonitor(stages=('train',)) to skip validation.")
    )


_NUMBERS: dict[tuple, Tensor] = {}


def normalize(values: Mapping[str, Any], owner: Callable[[], str]) -> Mapping[str, Any]:
    """A step output with duck-typed Gaussians as their tensors and a Python-number ``dec_logvar`` as a 0-d tensor.

    A ``posterior`` (``likelihood``) with ``.mean`` and ``.logvar`` (or ``.var``, ``.std``, ...) becomes
    ``enc_mean``/``enc_logvar`` (``dec_mean``/``dec_logvar``), read by :func:`~._inputs.gaussian_moments`: tensors
    stack across batches, objects would be updated one by one. Metadata only; the mapping is copied only when
    something changes: an output without ``posterior`` and ``likelihood`` whose ``dec_logvar`` is a tensor (or
    absent) is returned as it is after three lookups.
    """
    lv = values.get("dec_logvar")
    if (lv is None or isinstance(lv, Tensor)) and values.get("posterior") is None and values.get("likelihood") is None:
        return values
    swaps: dict[str, Any] = {}
    for key, mean_key, logvar_key in (("posterior", "enc_mean", "enc_logvar"),
                                      ("likelihood", "dec_mean", "dec_logvar")):
        value = values.get(key)
        moments = None if value is None else _in.gaussian_moments(key, value)
        if moments is not None:
            if values.get(mean_key) is not None or values.get(logvar_key) is not None:
                raise ValueError(f"{owner()} expected either `{key}` or `{mean_key}`/`{logvar_key}`, but got both.")
            swaps.update({key: None, mean_key: moments[0], logvar_key: moments[1]})
    lv = values.get("dec_logvar")
    if isinstance(lv, (int, float)) and not isinstance(lv, bool):
        like = swaps.get("enc_logvar", values.get("enc_logvar"))
        like = like if isinstance(like, Tensor) else values.get("x")
        key = (float(lv), *((like.device, like.dtype) if isinstance(like, Tensor) else ()))
        found = _NUMBERS.get(key)
        if found is None:
            if len(_NUMBERS) > 16:
                _NUMBERS.clear()
            found = _NUMBERS[key] = _in.as_logvar("dec_logvar", lv, like if isinstance(like, Tensor) else None)
        swaps["dec_logvar"] = found
    if not swaps:
        return values
    return {k: v for k, v in {**values, **swaps}.items() if v is not None or k not in swaps}


def _fmt(shape: Any) -> str:
    return str(tuple(shape))


class StageLayout:
    """What the stage's first batch established: keys, sizes, decoder layout, each tensor's shape rule.

    A shape rule is ``(axis, shape)``: the batch dimension's position (``None`` for a tensor without one,
    such as a scalar ``dec_logvar`` or a ``(H,)`` ``prior_logvar``) and the first batch's shape.
    """

    def __init__(self, kw: Mapping[str, Any], owner: str, *, need_loss: bool = False,
                 need_residual: bool = False) -> None:
        d = _in.data(kw.get("x"), classes=_in.is_categorical(kw.get("dec_class_logits"), kw.get("likelihood")))
        enc = _in.encoder(kw.get("enc_mean"), kw.get("enc_logvar"), kw.get("posterior"), owner=owner, given=kw)
        if enc.mean is None:
            raise missing_inputs_error(owner, "`enc_mean` and `enc_logvar` (or a `posterior`)", kw)
        self.batch, self.latent_dim = enc.logvar.shape
        p = _in.prior(kw.get("prior_logvar"), kw.get("prior"), latent_dim=self.latent_dim, batch=self.batch,
                      check_rows=False)
        latent = kw.get("enc_logvar", kw.get("posterior"))
        #: the latents' shape per point before flattening: ``(H,)``, or ``(C, h, w)`` for an image VAE
        self.latent_shape = (tuple(latent.shape[1:]) if isinstance(latent, Tensor) else
                             _full_shape(latent)[1:] if isinstance(latent, Distribution) else (self.latent_dim,))
        dec = _in.decoder(kw.get("dec_mean"), kw.get("dec_logvar"), kw.get("likelihood"), d, owner=owner, given=kw,
                          dec_logits=kw.get("dec_logits"), dec_class_logits=kw.get("dec_class_logits"),
                          dec_probs=kw.get("dec_probs"))
        check_batch(owner, encoder=self.batch, decoder=dec.batch_size, x=d.batch_size)
        self.data_dim = dec.data_dim
        self.decoder_layout = dec.layout
        #: ``"gaussian"``, ``"bernoulli"``, ``"categorical"`` or ``"continuous_bernoulli"``
        self.decoder_kind = dec.kind
        #: a categorical decoder's ``x`` may hold integer class indices
        self._integer_x = d.raw is not None and not d.raw.is_floating_point()
        self.has_elbo = kw.get("elbo") is not None
        if self.has_elbo:  # a mean ELBO () or a (B, 1) column would be averaged over the wrong count
            elbo_shape = tuple(as_float_tensor("elbo", kw["elbo"]).shape)
            if elbo_shape != (self.batch,):
                raise ValueError(f"{owner} expected `elbo` of shape (B,) = ({self.batch},), one ELBO per sample,"
                                 f" but got {elbo_shape}.")
        elif d.x is None or (dec.mean is None and dec.params is None and dec.dist is None):
            raise missing_inputs_error(owner, "`elbo` (B,), or `x` and the decoder's `dec_mean` (Gaussian),"
                                              " `dec_logits`/`dec_probs` (Bernoulli), `dec_class_logits`"
                                              " (categorical) or `likelihood` to compute it", kw)
        self.has_prior = p.logvar is not None and p.dist is None
        #: distribution objects cannot be stacked: their batches go to the metrics one by one
        self.distributions = any(kw.get(k) is not None for k in DISTRIBUTION_KEYS)
        #: what a returned ``loss`` that is not one number is (a loss per sample under manual optimization):
        #: the objective check cannot regress it, so it is not kept; ``None`` otherwise
        self.unread_loss: str | None = None
        loss = kw.get("loss")
        if need_loss and loss is not None and not (isinstance(loss, Tensor) and loss.numel() == 1):
            self.unread_loss = (f"a tensor of shape {tuple(loss.shape)}" if isinstance(loss, Tensor)
                                else f"a {type(loss).__name__}")
            need_loss = False
        #: every vocabulary key of the first batch: each batch is checked for all of them
        self.keys = tuple(k for k in kw if k in STEP_KEYS and kw[k] is not None and k != "data_dim"
                          and (k != "loss" or need_loss))
        self._keyset = frozenset(self.keys)
        self._first_len = len(kw)
        data_rank = len(d.data_shape) if d.data_shape is not None else 1
        self._rules = {k: _shape_rule(k, kw[k], data_rank, dec.layout, dec.lead) for k in self.keys if k != "loss"}
        self._expected: dict[int, dict[str, tuple[int, ...]]] = {}
        #: the keys the metrics need, of which a batch keeps references: no D-sized tensor unless needed
        needed = {"enc_mean", "enc_logvar", "posterior", "prior_logvar", "prior", "dec_logvar", "likelihood",
                  "loss", *DISCRETE_DECODER_KEYS}
        if self.has_elbo:
            needed.add("elbo")
        if not self.has_elbo or (need_residual and "dec_sq_residual" not in kw):
            needed.update(("x", "dec_mean"))  # the ELBO from the pieces, or the squared residual
        if need_residual:
            needed.add("dec_sq_residual")
        self.kept = tuple(k for k in self.keys if k in needed)
        #: the tensors a reduction stacks (distribution objects are updated batch by batch)
        self.tensor_keys = tuple(k for k in self.kept if k in self._rules and isinstance(kw[k], Tensor))
        #: bytes that references to one point's tensors hold until the reduction
        self.bytes_per_point = sum(kw[k].numel() * kw[k].element_size() for k in self.tensor_keys
                                   if self._rules[k][0] is not None) // self.batch
        # the fast path of check(): every key of a batch fetched in one call, then per key a shape compared with a
        # tuple cached per batch size and a dtype compared by identity with the first batch's; it serves layouts of
        # tensors only (distribution objects take the full check)
        rule_keys = tuple(k for k in self.keys if k in self._rules)
        fast = (not self.distributions and len(self.keys) > 1 and "enc_logvar" in self._rules
                and all(isinstance(kw[k], Tensor) for k in rule_keys))
        self._get_all = operator.itemgetter(*self.keys) if fast else None
        self._get_kept = operator.itemgetter(*self.kept) if len(self.kept) > 1 else None
        self._rule_index = tuple(self.keys.index(k) for k in rule_keys)
        self._enc_index = self.keys.index("enc_logvar") if fast else -1
        # a dtype the full check rejects (an integer `elbo`) is recorded as None: such a batch takes the full check
        self._dtypes = tuple(kw[k].dtype if kw[k].is_floating_point() or (k == "x" and self._integer_x) else None
                             for k in rule_keys) if fast else ()
        self._shapes: dict[int, tuple[tuple[int, ...], ...]] = {}

    def batch_axis(self, key: str) -> int | None:
        """The dimension of ``key``'s tensor that runs over the batch's points (``None``: one value per batch)."""
        return self._rules[key][0]

    def expected(self, batch: int) -> dict[str, tuple[int, ...]]:
        """Each key's expected shape for a batch of ``batch`` points (cached per batch size)."""
        found = self._expected.get(batch)
        if found is None:
            found = {k: shape if axis is None else (*shape[:axis], batch, *shape[axis + 1:])
                     for k, (axis, shape) in self._rules.items()}
            if len(self._expected) > 16:
                self._expected.clear()
            self._expected[batch] = found
        return found

    def check(self, values: Mapping[str, Any], owner: Callable[[], str]) -> tuple[dict[str, Any], int]:
        """The batch's vocabulary keys and its size, checked against the layout from metadata only (no device work).

        ``owner()`` names the hook and module in an error message. A batch with the first batch's number of keys,
        all of them tensors of the expected shapes and of the first batch's dtypes, passes the fast path; any other
        batch takes the full check, which raises for what is wrong.
        """
        if self._get_all is not None and len(values) == self._first_len:
            try:
                got = self._get_all(values)
                batch = got[self._enc_index].shape[0]
            except (KeyError, AttributeError, IndexError):  # a missing key, a non-tensor, a 0-d encoder output
                got = None
            if got is not None:
                shapes = self._shapes.get(batch)
                if shapes is None:
                    shapes = self._shapes_of(batch)
                for i, shape, dtype in zip(self._rule_index, shapes, self._dtypes):
                    value = got[i]
                    if type(value) is not Tensor and not isinstance(value, Tensor):
                        break
                    if value.dtype is not dtype or value.shape != shape:
                        break
                else:
                    if self._get_kept is None:
                        return ({self.kept[0]: values[self.kept[0]]} if self.kept else {}), batch
                    return dict(zip(self.kept, self._get_kept(values))), batch
        return self._check(values, owner)

    def _shapes_of(self, batch: int) -> tuple[tuple[int, ...], ...]:
        """The fast path's expected shapes for a batch of ``batch`` points, in its key order (cached)."""
        expected = self.expected(batch)
        shapes = tuple(expected[self.keys[i]] for i in self._rule_index)
        if len(self._shapes) > 16:
            self._shapes.clear()
        self._shapes[batch] = shapes
        return shapes

    def _check(self, values: Mapping[str, Any], owner: Callable[[], str]) -> tuple[dict[str, Any], int]:
        """:meth:`check` in full: every key, type, shape and dtype, raising for the first that is wrong."""
        try:
            checked = {k: values[k] for k in self.keys}
        except KeyError as err:
            raise ValueError(
                f"{owner()} expected `{err.args[0]}` in every batch's output, as in the stage's first batch, but got"
                f" the keys {sorted(str(k) for k in values)}."
            ) from None
        if len(values) != self._first_len:  # some other keys than the first batch's: a new vocabulary key?
            new = sorted(k for k in values if k in STEP_KEYS and k not in self._keyset and values[k] is not None
                         and k not in ("loss", "data_dim"))
            if new:
                raise ValueError(
                    f"{owner()} got {', '.join(f'`{k}`' for k in new)} in a later batch's output, but not in the"
                    f" stage's first batch, which fixed its inputs {sorted(k for k in self.keys if k != 'loss')}."
                    " Return the same keys from every batch."
                )
        enc = checked.get("enc_logvar")
        if isinstance(enc, Tensor) and enc.dim():
            batch = enc.shape[0]
        else:
            enc = checked.get("posterior")
            batch = _full_shape(enc)[0] if isinstance(enc, Distribution) and _full_shape(enc) else self.batch
        for key, shape in self.expected(batch).items():
            value = checked[key]
            if isinstance(value, Tensor):
                if value.shape != shape or not (value.is_floating_point() or (key == "x" and self._integer_x)):
                    self._raise(key, value, shape, owner())
            elif not isinstance(value, Distribution) or _full_shape(value) != shape:
                self._raise(key, value, shape, owner())
        return {k: checked[k] for k in self.kept}, batch

    def _raise(self, key: str, value: Any, shape: tuple[int, ...], owner: str) -> None:
        if not isinstance(value, (Tensor, Distribution)):
            raise TypeError(f"{owner} expected `{key}` to be a torch.Tensor, as in the stage's first batch, but got"
                            f" {type(value).__name__}.")
        if isinstance(value, Tensor) and not value.is_floating_point() and not (key == "x" and self._integer_x):
            raise TypeError(f"{owner} expected `{key}` to be a floating-point tensor, but got dtype {value.dtype}.")
        axis = self._rules[key][0]
        rule = "" if axis is None else f" (its batch dimension {axis} matching `enc_logvar`)"
        raise ValueError(
            f"{owner} expected `{key}` of shape {_fmt(shape)}{rule}, as set by the stage's first batch"
            f" {_fmt(self._rules[key][1])}, but got {_fmt(_full_shape(value))}."
        )


def _full_shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, Distribution):
        return tuple(value.batch_shape) + tuple(value.event_shape)
    return tuple(value.shape)


def _shape_rule(key: str, value: Any, data_rank: int, decoder_layout: str,
                decoder_lead: int = 1) -> tuple[int | None, tuple[int, ...]]:
    """``(axis, shape)``: where the batch dimension sits in this key's first-batch ``shape`` (None: nowhere)."""
    shape = _full_shape(value)
    if key in DISCRETE_DECODER_KEYS:  # (B, *data[, C]) or (S, B, *data[, C]), as the parser read it
        axis: int | None = decoder_lead - 1
    elif key in ("dec_mean", "likelihood"):  # (B, *data) or (S, B, *data)
        axis = 0 if len(shape) == 1 + data_rank else 1
    elif key == "dec_logvar":  # (B, D) or (B, 1); (S, B, D); or one value per model: () or (D,)
        axis = {"per_sample": 0, "per_z": 1}.get(decoder_layout)
    elif key in ("prior_logvar", "prior"):  # (H,); each sample's own (B, H), or a prior repeated over a plate
        axis = 0 if len(shape) == 2 else None
    else:  # enc_mean, enc_logvar, posterior, x, elbo, dec_sq_residual
        axis = 0
    return axis, shape
