"""A small convolutional VAE-1 for 1 x 8 x 8 images, with the step dict of ``GaussianVAE.step``."""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Normal


class ConvVAE(nn.Module):
    r"""A VAE-1 with conv encoder and decoder on 1 x side x side images (an even side) and a scalar decoder variance.

    .. math::

        \mathrm{ELBO}(x) = \mathbb{E}_{q(z|x)} \log N(x; \mu(z), \sigma^2 I) - \mathrm{KL}(q(z|x) \,\|\, N(0, I))

    Encoder: conv 3x3 (1 -> c1), conv 3x3 stride 2 (c1 -> c2), then linear heads for the mean and the log-variance.
    Decoder: a linear layer from z (so the latents enter linearly, as the theory assumes), a transposed conv
    stride 2 (c2 -> c1) and a conv 3x3 (c1 -> 1). One learned decoder log-variance for all pixels.

    Args:
        latent_dim: number H of latents.
        channels: ``(c1, c2)``.
        side: image side (8 for scikit-learn's digits).
        init_logvar: initial decoder log-variance.
    """

    def __init__(self, latent_dim: int, channels: tuple[int, ...] = (16, 32), side: int = 8,
                 init_logvar: float = 0.0) -> None:
        super().__init__()
        if len(channels) != 2 or side % 2:
            raise ValueError(f"Expected two channel counts and an even side, but got {channels} and {side}.")
        c1, c2 = channels
        self.side, self.latent_dim, self.data_dim = side, latent_dim, side * side
        half = side // 2
        self.encoder = nn.Sequential(nn.Conv2d(1, c1, 3, padding=1), nn.ELU(),
                                     nn.Conv2d(c1, c2, 3, stride=2, padding=1), nn.ELU(), nn.Flatten())
        self.enc_mean_head = nn.Linear(c2 * half * half, latent_dim)
        self.enc_logvar_head = nn.Linear(c2 * half * half, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, c2 * half * half), nn.ELU(),
                                     nn.Unflatten(1, (c2, half, half)),
                                     nn.ConvTranspose2d(c2, c1, 4, stride=2, padding=1), nn.ELU(),
                                     nn.Conv2d(c1, 1, 3, padding=1), nn.Flatten())
        self.dec_logvar = nn.Parameter(torch.tensor(float(init_logvar)))

    def step(self, x: Tensor, eps: Tensor | None = None) -> dict[str, Tensor]:
        """Encode, sample, decode and score a batch ``x`` (B, side * side) or (B, 1, side, side).

        ``eps`` is (S, B, H) or (B, H) standard-normal noise, one draw from ``torch.randn`` when omitted. Returns
        ``x`` (B, D), ``enc_mean``, ``enc_logvar`` (B, H), ``dec_mean`` ((B, D) for one draw, else (S, B, D)),
        ``dec_logvar`` () and the per-point ``elbo`` (B,), averaged over the draws.
        """
        x = x.reshape(x.shape[0], -1)
        if x.shape[1] != self.data_dim:
            raise ValueError(f"Expected data of shape (batch, {self.data_dim}) after flattening, but got"
                             f" {tuple(x.shape)}.")
        features = self.encoder(x.reshape(-1, 1, self.side, self.side))
        enc_mean, enc_logvar = self.enc_mean_head(features), self.enc_logvar_head(features)
        if eps is None:
            eps = torch.randn_like(enc_mean)
        if eps.dim() == 2:
            eps = eps.unsqueeze(0)
        z = enc_mean + torch.exp(0.5 * enc_logvar) * eps  # (S, B, H)
        dec_mean = self.decoder(z.reshape(-1, self.latent_dim)).reshape(*z.shape[:2], self.data_dim)
        log_lik = Normal(dec_mean, torch.exp(0.5 * self.dec_logvar), validate_args=False).log_prob(x)
        kl = 0.5 * (enc_mean.square() + enc_logvar.exp() - 1.0 - enc_logvar).sum(-1)
        elbo = log_lik.sum(-1).mean(0) - kl
        if z.shape[0] == 1:
            dec_mean = dec_mean.squeeze(0)
        return {"enc_mean": enc_mean, "enc_logvar": enc_logvar, "dec_mean": dec_mean,
                "dec_logvar": self.dec_logvar, "x": x, "elbo": elbo}

