"""Streaming model selection with the BIC: sampled ELBO against the entropy sum (Damm et al., Fig. 3a).

A D = 10 data stream changes its intrinsic dimension twice: 6, then 2, then 4. Three linear VAEs
with H = 2, 4 and 6 latents learn from it online (batches of 10 points, one pass, Adam 2e-3).
After every batch each model gets a Bayesian information criterion

    BIC = k ln(10) - 2 * 10 * F,    k = H * D + 1,

once with F the batch's sampled ELBO and once with F the entropy sum; the lowest BIC picks H.
The entropy sum needs no sampling and, for a linear VAE, depends on the parameters only (the encoder
variances do not depend on x), so its BIC curve is smooth where the sampled ELBO's is noisy. It
describes the fitted model, not the new batch: right after a change it follows the data only as
fast as the parameters adapt.

The defaults are the paper's (3 segments x 100,000 points): one to two minutes on one core.
The models need a few thousand batches to settle after each change, so much smaller segments
(``--segment-size 20000``) leave the first segment undecided.

    python examples/streaming_bic.py                          # the paper's size
    python examples/streaming_bic.py --smoke                  # a few seconds

The three models are trained as one batched model: each keeps max(H) = 6 latents, of which the
unused ones are masked to the prior (mean 0, variance 1) with a zero decoder column, so they add
nothing to either estimate and get no gradient.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
from torch import Tensor, nn

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.data import make_streaming_data

from _common import example_parser, pyplot, save_figure

NAME = "streaming_bic"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--segment-size", type=int, default=100_000,
                        help="points per segment (default: 100,000, the paper's)")
    parser.add_argument("--dims", type=int, nargs="+", default=[6, 2, 4],
                        help="intrinsic dimension of each segment (default: 6 2 4)")
    parser.add_argument("--latents", type=int, nargs="+", default=[2, 4, 6],
                        help="H of the competing linear VAEs (default: 2 4 6)")
    parser.add_argument("--batch-size", type=int, default=10, help="points per batch (default: 10)")
    parser.add_argument("--lr", type=float, default=2e-3, help="Adam learning rate (default: 2e-3)")
    parser.add_argument("--eval-batches", type=int, default=5000,
                        help="score the last this many batches of each segment (default: 5,000;"
                             " at most half a segment)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.segment_size, args.eval_batches = 1_000, 50
    return args


class LinearVAEs(nn.Module):
    """Linear VAEs (pPCA's VAE) with ``latent_dims[m]`` latents each, as one padded batch of parameters.

    Model m: encoder mean ``A_m x + a_m``, x-independent encoder log-variances, decoder mean
    ``W_m z + b_m``, one decoder log-variance ``log sigma_m^2``, prior N(0, I). ``forward`` returns one
    dict of the package's vocabulary per model, so the package's functions score each of them.
    """

    def __init__(self, data_dim: int, latent_dims: list[int]) -> None:
        super().__init__()
        m, h = len(latent_dims), max(latent_dims)
        self.latent_dims = list(latent_dims)
        self.register_buffer("mask", (torch.arange(h) < torch.tensor(latent_dims)[:, None]).float())
        self.enc_weight = nn.Parameter(torch.randn(m, h, data_dim) / math.sqrt(data_dim))
        self.enc_bias = nn.Parameter(torch.zeros(m, h))
        self.enc_logvar = nn.Parameter(torch.zeros(m, h))
        self.dec_weight = nn.Parameter(torch.randn(m, data_dim, h) / math.sqrt(h))
        self.dec_bias = nn.Parameter(torch.zeros(m, data_dim))
        self.dec_logvar = nn.Parameter(torch.zeros(m))

    def forward(self, x: Tensor) -> list[dict[str, Tensor]]:
        mask = self.mask[:, None, :]  # (M, 1, H)
        enc_mean = (torch.einsum("bd,mhd->mbh", x, self.enc_weight) + self.enc_bias[:, None]) * mask
        enc_logvar = (self.enc_logvar * self.mask)[:, None].expand_as(enc_mean)
        z = (enc_mean + torch.exp(0.5 * enc_logvar) * torch.randn_like(enc_mean)) * mask
        dec_mean = torch.einsum("mbh,mdh->mbd", z, self.dec_weight) + self.dec_bias[:, None]
        return [
            {"x": x, "enc_mean": enc_mean[m, :, :h], "enc_logvar": enc_logvar[m, :, :h],
             "dec_mean": dec_mean[m], "dec_logvar": self.dec_logvar[m]}
            for m, h in enumerate(self.latent_dims)
        ]


def train_online(x: Tensor, model: LinearVAEs, batch_size: int, lr: float) -> tuple[Tensor, Tensor]:
    """One pass over ``x`` in order; returns the per-batch sampled ELBO and entropy sum, each (M, batches)."""
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    num_batches = x.shape[0] // batch_size
    elbos = torch.empty(len(model.latent_dims), num_batches)
    sums = torch.empty_like(elbos)
    for i in range(num_batches):
        outs = model(x[i * batch_size:(i + 1) * batch_size])
        elbo = torch.stack([F.gaussian_elbo(**out) for out in outs])  # (M,) mean over the batch
        optimizer.zero_grad()
        (-elbo.sum()).backward()
        optimizer.step()
        with torch.no_grad():
            elbos[:, i] = elbo
            sums[:, i] = torch.stack([F.entropy_sum(**out) for out in outs])
    return elbos, sums


def score(bics: dict[str, Tensor], latents: list[int], dims: list[int], per_segment: int, last: int,
          batch_size: int) -> dict[str, list]:
    """Per segment, over its last ``last`` batches: share where the right H has the lowest BIC; std ratios.

    ``std_ratio``: standard deviation of the ELBO's BIC over that of the entropy sum's, per model.
    ``noise_ratio``: the same for the batch-to-batch changes, which leaves out the slow drift of learning.
    ``settled_*``: points after the change from which on the right H wins in 99 % of the segment's batches.
    """
    keys = ("right_share_elbo", "right_share_sum", "std_ratio", "noise_ratio", "settled_elbo", "settled_sum")
    result: dict[str, list] = {key: [] for key in keys}
    for s, k in enumerate(dims):
        window = slice((s + 1) * per_segment - last, (s + 1) * per_segment)
        right = latents.index(k) if k in latents else -1
        for name, bic in bics.items():
            chosen = bic[:, window].argmin(0)
            result[f"right_share_{name}"].append(float((chosen == right).float().mean()))
            hits = (bic[:, s * per_segment:(s + 1) * per_segment].argmin(0) == right).float()
            share_from = hits.flip(0).cumsum(0).flip(0) / torch.arange(len(hits), 0, -1)  # share in [t, end)
            settled = torch.nonzero(share_from >= 0.99)
            result[f"settled_{name}"].append(int(settled[0]) * batch_size if len(settled) else None)
        ratio = bics["elbo"][:, window].std(1) / bics["sum"][:, window].std(1)  # one per model
        noise = bics["elbo"][:, window].diff().std(1) / bics["sum"][:, window].diff().std(1)
        result["std_ratio"].append([round(float(r), 1) for r in ratio])
        result["noise_ratio"].append([round(float(r), 1) for r in noise])
    return result


def plot(bics: dict[str, Tensor], latents: list[int], dims: list[int], per_segment: int, batch_size: int,
         path: Path) -> None:
    plt = pyplot()

    fig, axes = plt.subplots(2, 1, figsize=(9, 6), sharex=True, sharey=True)
    steps = torch.arange(bics["sum"].shape[1]) * batch_size
    every = max(1, len(steps) // 6000)  # thin the lines for drawing speed
    titles = {"elbo": "BIC from the sampled ELBO", "sum": "BIC from the entropy sum"}
    for ax, (name, title) in zip(axes, titles.items()):
        for m, h in enumerate(latents):
            ax.plot(steps[::every], bics[name][m, ::every], lw=0.6, alpha=0.8, label=f"H = {h}")
        for s, k in enumerate(dims):
            ax.axvline(s * per_segment * batch_size, color="k", lw=0.8)
            ax.text((s + 0.5) * per_segment * batch_size, 1.0, f"k = {k}", transform=ax.get_xaxis_transform(),
                    ha="center", va="bottom")
        ax.set_ylabel(title.replace(" from", "\nfrom"))
    settled = bics["sum"][:, min(1000, per_segment // 10):]  # the entropy sum's range once learning started
    low, high = float(settled.min()), float(settled.max())
    axes[0].set_ylim(low - 0.15 * (high - low), high + 0.15 * (high - low))
    axes[0].legend(loc="upper right", fontsize="small", ncols=len(latents))
    axes[1].set_xlabel("data points seen")
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    data = make_streaming_data(segment_size=args.segment_size, dims=args.dims, seed=args.seed)
    data_dim = data.x.shape[1]
    model = LinearVAEs(data_dim, args.latents)

    start = time.perf_counter()
    elbos, sums = train_online(data.x, model, args.batch_size, args.lr)
    seconds = time.perf_counter() - start

    bics = {  # k = H * D + 1: decoder weights plus the decoder variance
        name: torch.stack([F.bic(values[m], h * data_dim + 1, args.batch_size)
                           for m, h in enumerate(args.latents)])
        for name, values in (("elbo", elbos), ("sum", sums))
    }
    per_segment = args.segment_size // args.batch_size
    last = min(args.eval_batches, per_segment // 2)
    result = {"segment_size": args.segment_size, "eval_batches": last, "dims": list(args.dims),
              "latents": list(args.latents), "seconds": round(seconds, 1),
              **score(bics, args.latents, args.dims, per_segment, last, args.batch_size)}
    plot(bics, args.latents, args.dims, per_segment, args.batch_size, args.out / "streaming_bic.png")

    print(f"\nStream: {len(args.dims)} segments x {args.segment_size} points, D = {data_dim};"
          f" linear VAEs with H = {args.latents}, batch {args.batch_size}, one pass in {seconds:.0f} s.")
    print(f"Share of the last {last} batches of each segment where the right H has the lowest BIC:")
    print(f"{'segment':>8s}{'right H':>9s}{'sampled ELBO':>14s}{'entropy sum':>13s}"
          f"   std ratio ELBO/sum per H (std; batch-to-batch)")
    for s, k in enumerate(args.dims):
        print(f"{s + 1:>8d}{k:>9d}{result['right_share_elbo'][s]:>13.1%}{result['right_share_sum'][s]:>13.1%}"
              f"   {result['std_ratio'][s]}; {result['noise_ratio'][s]}")
    print("Points after each change until the right H wins in 99 % of the rest of the segment:")
    for s, k in enumerate(args.dims):
        print(f"{s + 1:>8d}{k:>9d}{result['settled_elbo'][s]!s:>14s}{result['settled_sum'][s]!s:>13s}")
    print(f"Figure: {(args.out / 'streaming_bic.png').resolve()}")
    return result


if __name__ == "__main__":
    main()
