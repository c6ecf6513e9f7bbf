"""A Gaussian VAE (kinds VAE-0/1/2/3 and the linear VAE) as a LightningModule.

Its steps return the package's step vocabulary (``enc_mean``, ``enc_logvar``, ``dec_mean``,
``dec_logvar``, ``prior_logvar``, ``x``, ``elbo``), which the metrics and the callback consume.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torch.nn.utils import parametrize

_KINDS = ("linear", "vae0", "vae1", "vae2", "vae3")
_ACTIVATIONS = {"elu": nn.ELU, "gelu": nn.GELU, "relu": nn.ReLU, "silu": nn.SiLU, "tanh": nn.Tanh}
_OPTIMIZERS = ("adam", "sgd")


class UnitNormColumns(nn.Module):
    """Parametrization that rescales every column ``weight[:, h]`` of a (out, H) weight to unit norm."""

    def forward(self, weight: Tensor) -> Tensor:
        return weight / weight.norm(dim=0, keepdim=True)


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"Expected `{name}` to be a positive int, but got {value!r}.")


def _mlp(sizes: Sequence[int], activation: str, final_activation: bool) -> nn.Sequential:
    """Linear layers between consecutive ``sizes`` with activations in between (and after, if asked)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(n_in, n_out))
        if final_activation or i < len(sizes) - 2:
            layers.append(_ACTIVATIONS[activation]())
    return nn.Sequential(*layers)


class GaussianVAE(LightningModule):
    """Gaussian VAE with a diagonal Gaussian encoder and a Gaussian decoder.

    ``kind`` picks the model of Damm et al. (AISTATS 2023):

    - ``"vae0"``: fixed decoder variance ``exp(fixed_logvar)`` (a buffer), prior N(0, I);
    - ``"vae1"``: one learnable decoder log-variance (a scalar ``nn.Parameter``), prior N(0, I);
    - ``"vae2"``: as ``"vae1"`` plus learnable prior log-variances ``prior_logvar`` (H,); the first
      decoder layer keeps unit-norm columns through ``torch.nn.utils.parametrize``;
    - ``"vae3"``: the decoder outputs a mean and a log-variance per data dimension; prior N(0, I);
    - ``"linear"``: probabilistic PCA's VAE: linear encoder mean, x-independent learnable encoder
      log-variances (H,), linear decoder, scalar learnable decoder log-variance, prior N(0, I).

    The MLP kinds use ``data_dim -> hidden_dims -> (mean, logvar)`` encoders and
    ``latent_dim -> reversed(hidden_dims) -> data_dim`` decoders whose first layer is linear in z.
    Latents are drawn by reparameterisation, ``z = nu + tau * eps`` with ``num_samples`` draws of
    ``eps`` per data point, and the per-sample ELBO is computed with ``torch.distributions``:
    the decoder log-likelihood summed over D and averaged over the draws, minus the KL divergence
    of the posterior from the prior summed over H.

    Args:
        data_dim: dimension D of the (flattened) data.
        latent_dim: number H of latents.
        kind: one of ``"linear"``, ``"vae0"``, ``"vae1"``, ``"vae2"``, ``"vae3"``.
        hidden_dims: hidden layer widths of the encoder (the decoder uses them reversed); ignored by
            ``"linear"``.
        lr: learning rate.
        num_samples: number S of latent draws per data point and step.
        init_logvar: initial learnable decoder log-variance (and initial bias of VAE-3's log-variance head).
        fixed_logvar: VAE-0's fixed decoder log-variance.
        beta: weight of the KL term in the training loss (the returned ``"elbo"`` always uses 1).
        kl_warmup_steps: if positive, the KL weight rises linearly from 0 to ``beta`` over this many
            optimizer steps (``trainer.global_step``; without a trainer, calls of ``training_step``).
        activation: hidden activation, one of ``"elu"``, ``"gelu"``, ``"relu"``, ``"silu"``, ``"tanh"``.
        optimizer: ``"adam"`` or ``"sgd"``.

    Raises:
        ValueError: if an argument is out of range or ``kind``, ``activation`` or ``optimizer`` is unknown.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> model = GaussianVAE(data_dim=8, latent_dim=2, kind="vae3", hidden_dims=(16,))
        >>> out = model.step(torch.randn(4, 8))
        >>> for name, value in out.items():
        ...     print(name, tuple(value.shape))
        enc_mean (4, 2)
        enc_logvar (4, 2)
        dec_mean (4, 8)
        dec_logvar (4, 8)
        x (4, 8)
        elbo (4,)
    """

    def __init__(
        self,
        data_dim: int,
        latent_dim: int,
        kind: str = "vae1",
        hidden_dims: Sequence[int] = (64, 64),
        lr: float = 1e-3,
        num_samples: int = 1,
        init_logvar: float = 0.0,
        fixed_logvar: float = 0.0,
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        activation: str = "tanh",
        optimizer: str = "adam",
    ) -> None:
        super().__init__()
        if kind not in _KINDS:
            raise ValueError(f"Expected `kind` to be one of {_KINDS}, but got {kind!r}.")
        _check_positive_int("data_dim", data_dim)
        _check_positive_int("latent_dim", latent_dim)
        _check_positive_int("num_samples", num_samples)
        hidden_dims = tuple(hidden_dims)
        for width in hidden_dims:
            _check_positive_int("hidden_dims", width)
        if not lr > 0:
            raise ValueError(f"Expected `lr` to be positive, but got {lr!r}.")
        if not beta >= 0:
            raise ValueError(f"Expected `beta` to be non-negative, but got {beta!r}.")
        if isinstance(kl_warmup_steps, bool) or not isinstance(kl_warmup_steps, int) or kl_warmup_steps < 0:
            raise ValueError(
                f"Expected `kl_warmup_steps` to be a non-negative int, but got {kl_warmup_steps!r}."
            )
        if activation not in _ACTIVATIONS:
            raise ValueError(
                f"Expected `activation` to be one of {tuple(_ACTIVATIONS)}, but got {activation!r}."
            )
        if optimizer not in _OPTIMIZERS:
            raise ValueError(f"Expected `optimizer` to be one of {_OPTIMIZERS}, but got {optimizer!r}.")
        self.save_hyperparameters()
        self.kind = kind
        self.data_dim = data_dim
        self.latent_dim = latent_dim
        self.num_samples = num_samples
        self._manual_steps = 0

        if kind == "linear":
            self.encoder = nn.Linear(data_dim, latent_dim)
            self.enc_logvar = nn.Parameter(torch.zeros(latent_dim))
            self.decoder = nn.Linear(latent_dim, data_dim)
        else:
            self.encoder = _mlp((data_dim, *hidden_dims), activation, final_activation=True)
            enc_out = hidden_dims[-1] if hidden_dims else data_dim
            self.enc_mean_head = nn.Linear(enc_out, latent_dim)
            self.enc_logvar_head = nn.Linear(enc_out, latent_dim)
            dec_sizes = (latent_dim, *reversed(hidden_dims))
            if kind == "vae3":
                # With hidden_dims == () the trunk is empty and the mean head is the first layer.
                self.decoder = _mlp(dec_sizes, activation, final_activation=True)
                self.dec_mean_head = nn.Linear(dec_sizes[-1], data_dim)
                self.dec_logvar_head = nn.Linear(dec_sizes[-1], data_dim)
                nn.init.zeros_(self.dec_logvar_head.weight)
                nn.init.constant_(self.dec_logvar_head.bias, init_logvar)
            else:
                self.decoder = _mlp((*dec_sizes, data_dim), activation, final_activation=False)

        if kind == "vae0":
            self.register_buffer("dec_logvar", torch.tensor(float(fixed_logvar)))
        elif kind != "vae3":
            self.dec_logvar = nn.Parameter(torch.tensor(float(init_logvar)))
        if kind == "vae2":
            self.prior_logvar = nn.Parameter(torch.zeros(latent_dim))
            parametrize.register_parametrization(self.first_decoder_layer, "weight", UnitNormColumns())

    @property
    def first_decoder_layer(self) -> nn.Linear:
        """The decoder's first layer, linear in z (the layer whose columns VAE-2 keeps at unit norm)."""
        if isinstance(self.decoder, nn.Linear):
            return self.decoder
        if len(self.decoder) > 0:
            return self.decoder[0]
        return self.dec_mean_head  # VAE-3 without hidden layers

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Encoder means and log-variances, both (B, H), of flattened data ``x`` (B, D)."""
        if self.kind == "linear":
            mean = self.encoder(x)
            return mean, self.enc_logvar.expand_as(mean)
        features = self.encoder(x)
        return self.enc_mean_head(features), self.enc_logvar_head(features)

    def decode(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Decoder means (..., D) and the decoder log-variance used with them for latents ``z`` (..., H)."""
        features = self.decoder(z)
        if self.kind == "vae3":
            return self.dec_mean_head(features), self.dec_logvar_head(features)
        return features, self.dec_logvar

    def _prior_std(self, like: Tensor) -> Tensor:
        if self.kind == "vae2":
            return torch.exp(0.5 * self.prior_logvar)
        return torch.ones((), dtype=like.dtype, device=like.device)

    def _step(self, x: Tensor, eps: Tensor | None) -> tuple[dict[str, Tensor], Tensor, Tensor]:
        x = x.reshape(x.shape[0], -1)
        if x.shape[-1] != self.data_dim:
            raise ValueError(
                f"Expected data of shape (batch, {self.data_dim}) after flattening, but got {tuple(x.shape)}."
            )
        enc_mean, enc_logvar = self.encode(x)
        enc_std = torch.exp(0.5 * enc_logvar)
        if eps is None:
            eps = torch.randn(self.num_samples, *enc_mean.shape, dtype=enc_mean.dtype, device=enc_mean.device)
        elif eps.dim() == 2:
            eps = eps.unsqueeze(0)
        z = enc_mean + enc_std * eps  # (S, B, H)
        dec_mean, dec_logvar = self.decode(z)
        log_lik = Normal(dec_mean, torch.exp(0.5 * dec_logvar), validate_args=False).log_prob(x)
        recon = log_lik.sum(-1).mean(0)
        posterior = Normal(enc_mean, enc_std, validate_args=False)
        prior = Normal(torch.zeros_like(enc_mean), self._prior_std(enc_mean), validate_args=False)
        kl = kl_divergence(posterior, prior).sum(-1)
        if z.shape[0] == 1:
            dec_mean = dec_mean.squeeze(0)
            if self.kind == "vae3":
                dec_logvar = dec_logvar.squeeze(0)
        out = {"enc_mean": enc_mean, "enc_logvar": enc_logvar, "dec_mean": dec_mean, "dec_logvar": dec_logvar}
        if self.kind == "vae2":
            out["prior_logvar"] = self.prior_logvar
        out["x"] = x
        out["elbo"] = recon - kl
        return out, recon, kl

    def step(self, x: Tensor, eps: Tensor | None = None) -> dict[str, Tensor]:
        """Encode, sample, decode and score a batch.

        Args:
            x: data (B, D) or (B, ...), flattened to (B, D).
            eps: optional standard-normal noise (S, B, H) or (B, H) for the reparameterisation; drawn
                with ``torch.randn`` (``num_samples`` draws) when omitted.

        Returns:
            The step dict: ``enc_mean``, ``enc_logvar``, ``dec_mean``, ``dec_logvar``, ``prior_logvar``
            (VAE-2 only), ``x`` and the per-sample ``elbo`` (B,).
        """
        return self._step(x, eps)[0]

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        """Same as :meth:`step`."""
        return self.step(x)

    def kl_weight(self, step: int) -> float:
        """KL weight of the training loss at optimizer step ``step`` (``beta``, ramped up during warm-up)."""
        beta = float(self.hparams.beta)
        warmup = self.hparams.kl_warmup_steps
        return beta * min(1.0, step / warmup) if warmup > 0 else beta

    @staticmethod
    def _batch_data(batch: Any) -> Tensor:
        return batch[0] if isinstance(batch, (tuple, list)) else batch

    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        out, recon, kl = self._step(self._batch_data(batch), None)
        elbo = out["elbo"]
        if self.hparams.beta == 1.0 and self.hparams.kl_warmup_steps == 0:
            out["loss"] = -elbo.mean()
        else:
            step = self.global_step if self._trainer is not None else self._manual_steps
            out["loss"] = -(recon - self.kl_weight(step) * kl).mean()
        self._manual_steps += 1
        if self._trainer is not None:
            batch_size = elbo.shape[0]
            self.log("train/elbo", elbo.mean(), on_step=False, on_epoch=True, batch_size=batch_size)
            self.log("train/loss", out["loss"], on_step=False, on_epoch=True, batch_size=batch_size)
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        out = self.step(self._batch_data(batch))
        out["loss"] = -out["elbo"].mean()
        if self._trainer is not None:
            batch_size = out["x"].shape[0]
            self.log("val/elbo", out["elbo"].mean(), on_step=False, on_epoch=True, batch_size=batch_size)
        return out

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.hparams.optimizer == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)
        return torch.optim.Adam(self.parameters(), lr=self.hparams.lr)
