"""Streaming model selection with the BIC: sampled ELBO against the entropy sum (Damm et al., Fig. 3a).

A D = 10 data stream changes its intrinsic dimension twice: 6, then 2, then 4. Three linear VAEs
with H = 2, 4 and 6 latents learn from it online (batches of 10 points, one pass, Adam 2e-3).
For every batch, before the optimizer step, each model gets a Bayesian information criterion

    BIC = k ln(10) - 2 * 10 * F,    k = H * D + 1,

once with F the batch's sampled ELBO and once with F the entropy sum; the lowest BIC picks H.
The entropy sum needs no sampling and, for a linear VAE, depends on the parameters only (the encoder
variances do not depend on x), so its BIC curve is smooth where the sampled ELBO's is noisy. It
describes the fitted model, not the new batch: right after a change it follows the data only as
fast as the parameters adapt.

``--setup paper`` (the default) is the set-up of the authors' code (their ``streamingVAE/``):
S = 100 z samples per point, each model learns from its own draw of the stream, one orthogonal U for
all segments (nested subspaces), encoder and decoder standard deviations tau = softplus(a),
sigma = softplus(b) with a = b = 0 at the start, ``nn.Linear``'s initialisation. ``--setup legacy``
is this script's earlier set-up: S = 1, one stream shared by the models, a new subspace per segment,
log-variance parameters. Both record the values before the optimizer step.

    python examples/streaming_bic.py                  # the paper's set-up and size, about 1 min on one core
    python examples/streaming_bic.py --setup legacy   # the earlier set-up
    python examples/streaming_bic.py --smoke          # a few seconds

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
#: The authors' published per-batch outputs (``streamingVAE/output/modelselection/`` of their repository),
#: scored over the last 5,000 batches of each segment; settling offsets from THEORY.md (the paper's Fig. 3a).
PAPER = {
    "right_share_elbo": [0.9994, 0.9898, 0.9832],
    "right_share_sum": [1.0, 1.0, 1.0],
    "bic_std_elbo": [14.73, 14.19, 14.55],
    "bic_std_sum": [0.982, 1.297, 0.804],
    "std_ratio_right": [15.0, 10.9, 18.1],
    "std_ratio_range": (9.6, 18.1),  # over all three models and segments
    "noise_ratio_right": [281, 252, 445],
    "point_std_elbo": (0.71, 0.74),
    "point_std_sum": (0.040, 0.065),
    "settle_sum": [2481, 197, 538],
    "settle_elbo": [2774, 394, 611],
}
SETUPS = {  # samples, own stream per model, subspaces, parametrization of the variances
    "paper": {"samples": 100, "own_stream": True, "subspaces": "nested", "parametrization": "softplus"},
    "legacy": {"samples": 1, "own_stream": False, "subspaces": "fresh", "parametrization": "logvar"},
}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--setup", choices=tuple(SETUPS), default="paper",
                        help="paper: the authors' set-up (default); legacy: this script's earlier one")
    parser.add_argument("--samples", type=int, default=None,
                        help="z samples per point for the ELBO (default: 100 with --setup paper, 1 with legacy)")
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
    parser.add_argument("--settle-run", type=int, default=100,
                        help="settled: the right H wins this many consecutive batches (default: 100)")
    args = parser.parse_args(argv)
    args.config = {**SETUPS[args.setup], **({} if args.samples is None else {"samples": args.samples})}
    if args.config["samples"] < 1:
        parser.error(f"--samples must be positive, got {args.samples}")
    if args.smoke:
        args.segment_size, args.eval_batches, args.settle_run = 1_000, 50, 10
        args.config["samples"] = min(args.config["samples"], 10)
    return args


class LinearVAEs(nn.Module):
    """Linear VAEs (pPCA's VAE) with ``latent_dims[m]`` latents each, as one padded batch of parameters.

    Model m: encoder mean ``A_m x + a_m``, x-independent encoder standard deviations tau_m (H,), decoder
    mean ``W_m z + b_m``, one decoder standard deviation sigma_m, prior N(0, I). With
    ``parametrization="softplus"`` (the paper's code) tau = softplus(p) and sigma = softplus(q), p = q = 0
    at the start, and the weights start as ``nn.Linear``'s; with ``"logvar"`` the parameters are the
    log-variances (0 at the start) and the weights start as N(0, 1 / fan_in).

    ``forward(x)`` takes one batch per model, (M, B, D), or one batch for all, (B, D), draws ``samples``
    z per point and returns one dict of the package's vocabulary per model (``dec_mean`` (S, B, D)).
    """

    def __init__(self, data_dim: int, latent_dims: list[int], parametrization: str = "softplus") -> None:
        super().__init__()
        if parametrization not in ("softplus", "logvar"):
            raise ValueError(f"Expected `parametrization` 'softplus' or 'logvar', but got {parametrization!r}.")
        m, h = len(latent_dims), max(latent_dims)
        self.latent_dims = list(latent_dims)
        self.parametrization = parametrization
        self.register_buffer("mask", (torch.arange(h) < torch.tensor(latent_dims)[:, None]).float())
        if parametrization == "softplus":  # nn.Linear's kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
            dec_fan_in = torch.tensor(latent_dims, dtype=torch.float32)[:, None, None]
            self.enc_weight = nn.Parameter((2 * torch.rand(m, h, data_dim) - 1) / math.sqrt(data_dim))
            self.enc_bias = nn.Parameter((2 * torch.rand(m, h) - 1) / math.sqrt(data_dim))
            self.dec_weight = nn.Parameter((2 * torch.rand(m, data_dim, h) - 1) / dec_fan_in.sqrt())
            self.dec_bias = nn.Parameter((2 * torch.rand(m, data_dim) - 1) / dec_fan_in[:, :, 0].sqrt())
        else:
            self.enc_weight = nn.Parameter(torch.randn(m, h, data_dim) / math.sqrt(data_dim))
            self.enc_bias = nn.Parameter(torch.zeros(m, h))
            self.dec_weight = nn.Parameter(torch.randn(m, data_dim, h) / math.sqrt(h))
            self.dec_bias = nn.Parameter(torch.zeros(m, data_dim))
        self.enc_param = nn.Parameter(torch.zeros(m, h))  # softplus^-1(tau) or log tau^2
        self.dec_param = nn.Parameter(torch.zeros(m))  # softplus^-1(sigma) or log sigma^2

    def logvars(self) -> tuple[Tensor, Tensor]:
        """Encoder log-variances (M, H) and decoder log-variances (M,)."""
        if self.parametrization == "softplus":
            return 2 * nn.functional.softplus(self.enc_param).log(), 2 * nn.functional.softplus(self.dec_param).log()
        return self.enc_param, self.dec_param

    def forward(self, x: Tensor, samples: int = 1) -> list[dict[str, Tensor]]:
        if x.dim() == 2:
            x = x.expand(len(self.latent_dims), *x.shape)
        enc_lv, dec_lv = self.logvars()
        mask = self.mask[:, None, :]  # (M, 1, H)
        enc_mean = (torch.einsum("mbd,mhd->mbh", x, self.enc_weight) + self.enc_bias[:, None]) * mask
        enc_logvar = (enc_lv * self.mask)[:, None].expand_as(enc_mean)
        eps = torch.randn(enc_mean.shape[0], samples, *enc_mean.shape[1:])  # (M, S, B, H)
        z = (enc_mean[:, None] + torch.exp(0.5 * enc_logvar)[:, None] * eps) * mask[:, None]
        dec_mean = torch.einsum("msbh,mdh->msbd", z, self.dec_weight) + self.dec_bias[:, None, None]
        return [
            {"x": x[m], "enc_mean": enc_mean[m, :, :h], "enc_logvar": enc_logvar[m, :, :h],
             "dec_mean": dec_mean[m], "dec_logvar": dec_lv[m]}
            for m, h in enumerate(self.latent_dims)
        ]


def train_online(x: Tensor, model: LinearVAEs, batch_size: int, lr: float, samples: int) -> tuple[Tensor, Tensor]:
    """One pass over ``x`` ((N, D), shared, or (M, N, D), one stream per model) in order.

    Returns the per-batch sampled ELBO and entropy sum, each (M, batches), both taken from the parameters
    that scored the batch, i.e. before the optimizer step the batch triggers.
    """
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    num_batches = x.shape[-2] // batch_size
    elbos = torch.empty(len(model.latent_dims), num_batches)
    sums = torch.empty_like(elbos)
    for i in range(num_batches):
        outs = model(x[..., i * batch_size:(i + 1) * batch_size, :], samples)
        elbo = torch.stack([  # (M,) mean over the batch
            F.gaussian_elbo(x=o["x"], enc_mean=o["enc_mean"], enc_logvar=o["enc_logvar"],
                            dec_mean=o["dec_mean"], dec_logvar=o["dec_logvar"])
            for o in outs
        ])
        with torch.no_grad():  # copied out before the step changes the parameters in place
            elbos[:, i] = elbo
            sums[:, i] = torch.stack([
                F.entropy_sum(enc_logvar=o["enc_logvar"], dec_logvar=o["dec_logvar"], x=o["x"]) for o in outs
            ])
        optimizer.zero_grad()
        (-elbo.sum()).backward()
        optimizer.step()
    return elbos, sums


def settling_offset(hits: Tensor, run: int) -> int | None:
    """First batch from which ``hits`` is true ``run`` times in a row (None if never)."""
    if len(hits) < run:
        return None
    full = torch.nonzero(hits.unfold(0, run, 1).all(1))
    return int(full[0]) if len(full) else None


def score(bics: dict[str, Tensor], values: dict[str, Tensor], latents: list[int], dims: list[int],
          per_segment: int, last: int, run: int) -> dict[str, list]:
    """Per segment, over its last ``last`` batches, for the BICs from the ELBO and from the entropy sum.

    ``right_share_*``: share of batches where the right H (the segment's intrinsic dimension) has the lowest BIC.
    ``std_ratio``: std of the ELBO's BIC over that of the entropy sum's, one per model; ``*_right``: the right model.
    ``noise_ratio``: the same for the batch-to-batch changes, which leaves out the slow drift of learning.
    ``bic_std_*`` and ``point_std_*``: the right model's BIC std and the std of its per-point value (BIC std / 2B).
    ``settle_*``: batches after the change until the right H wins ``run`` consecutive batches.
    """
    keys = ("right_share_elbo", "right_share_sum", "std_ratio", "noise_ratio", "std_ratio_right",
            "noise_ratio_right", "bic_std_elbo", "bic_std_sum", "point_std_elbo", "point_std_sum",
            "settle_elbo", "settle_sum")
    result: dict[str, list] = {key: [] for key in keys}
    for s, k in enumerate(dims):
        window = slice((s + 1) * per_segment - last, (s + 1) * per_segment)
        right = latents.index(k) if k in latents else -1
        for name, bic in bics.items():
            chosen = bic[:, window].argmin(0)
            result[f"right_share_{name}"].append(float((chosen == right).float().mean()))
            hits = bic[:, s * per_segment:(s + 1) * per_segment].argmin(0) == right
            result[f"settle_{name}"].append(settling_offset(hits, run))
            result[f"bic_std_{name}"].append(float(bic[right, window].std()))
            result[f"point_std_{name}"].append(float(values[name][right, window].std()))
        ratio = bics["elbo"][:, window].std(1) / bics["sum"][:, window].std(1)  # one per model
        noise = bics["elbo"][:, window].diff().std(1) / bics["sum"][:, window].diff().std(1)
        result["std_ratio"].append([float(r) for r in ratio])
        result["noise_ratio"].append([float(r) for r in noise])
        result["std_ratio_right"].append(float(ratio[right]))
        result["noise_ratio_right"].append(float(noise[right]))
    return result


def plot(bics: dict[str, Tensor], latents: list[int], dims: list[int], per_segment: int, batch_size: int,
         settle: dict[str, list], path: Path) -> None:
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
            if settle[name][s] is not None:  # where this BIC settles on the right H
                ax.axvline((s * per_segment + settle[name][s]) * batch_size, color="k", lw=0.8, ls=":")
        ax.set_ylabel(title.replace(" from", "\nfrom"))
    settled = bics["sum"][:, min(1000, per_segment // 10):]  # the entropy sum's range once learning started
    low, high = float(settled.min()), float(settled.max())
    axes[0].set_ylim(low - 0.15 * (high - low), high + 0.15 * (high - low))
    axes[0].legend(loc="upper right", fontsize="small", ncols=len(latents))
    axes[1].set_xlabel("data points seen (dotted: settled on the right H)")
    save_figure(fig, path)


def make_stream(args: argparse.Namespace, models: int) -> Tensor:
    """The stream, (N, D) shared by the models or (M, N, D) with one draw per model of the same subspaces."""
    kwargs = {"segment_size": args.segment_size, "dims": args.dims, "subspaces": args.config["subspaces"],
              "param_seed": args.seed}
    if not args.config["own_stream"]:
        return make_streaming_data(seed=args.seed, **kwargs).x
    return torch.stack([make_streaming_data(seed=1000 * args.seed + 1 + m, **kwargs).x for m in range(models)])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)
    x = make_stream(args, len(args.latents))
    data_dim = x.shape[-1]
    model = LinearVAEs(data_dim, args.latents, args.config["parametrization"])

    start = time.perf_counter()
    elbos, sums = train_online(x, model, args.batch_size, args.lr, args.config["samples"])
    seconds = time.perf_counter() - start

    values = {"elbo": elbos, "sum": sums}
    bics = {  # k = H * D + 1: decoder weights plus the decoder variance
        name: torch.stack([F.bic(v[m], h * data_dim + 1, args.batch_size) for m, h in enumerate(args.latents)])
        for name, v in values.items()
    }
    per_segment = args.segment_size // args.batch_size
    last = min(args.eval_batches, per_segment // 2)
    result = {"setup": args.setup, **args.config, "segment_size": args.segment_size, "eval_batches": last,
              "settle_run": args.settle_run, "dims": list(args.dims), "latents": list(args.latents),
              "seconds": round(seconds, 1),
              **score(bics, values, args.latents, args.dims, per_segment, last, args.settle_run)}
    plot(bics, args.latents, args.dims, per_segment, args.batch_size,
         {"elbo": result["settle_elbo"], "sum": result["settle_sum"]}, args.out / "streaming_bic.png")
    report(result, args, data_dim)
    print(f"Figure: {(args.out / 'streaming_bic.png').resolve()}")
    return result


def report(r: dict, args: argparse.Namespace, data_dim: int) -> None:
    """Print the scores per segment, with the authors' published numbers beside them for the paper's set-up."""
    paper = args.setup == "paper" and args.dims == [6, 2, 4] and args.latents == [2, 4, 6]
    c = args.config
    print(f"\nStream ({args.setup} set-up): {len(args.dims)} segments x {args.segment_size} points, D = {data_dim},"
          f" {'one stream per model' if c['own_stream'] else 'one stream shared'}, {c['subspaces']} subspaces;"
          f" linear VAEs with H = {args.latents} ({c['parametrization']} variances), batch {args.batch_size},"
          f" S = {c['samples']}; one pass in {r['seconds']:.0f} s.")
    print(f"Last {r['eval_batches']} batches of each segment" + (" (authors' published outputs in brackets):"
                                                                  if paper else ":"))

    def cell(key: str, s: int, fmt: str) -> str:
        ours = "-" if r[key][s] is None else format(r[key][s], fmt)
        return f"{ours} ({format(PAPER[key][s], fmt)})" if paper else ours

    rows = [("right H by BIC, sampled ELBO", "right_share_elbo", ".2%"),
            ("right H by BIC, entropy sum", "right_share_sum", ".2%"),
            ("std of the right model's BIC, ELBO", "bic_std_elbo", ".2f"),
            ("std of the right model's BIC, entropy sum", "bic_std_sum", ".3f"),
            ("std ratio ELBO/sum, right model", "std_ratio_right", ".1f"),
            ("batch-to-batch std ratio, right model", "noise_ratio_right", ".0f"),
            (f"settled after (batches), ELBO: {args.settle_run} right in a row", "settle_elbo", "d"),
            (f"settled after (batches), entropy sum: {args.settle_run} right in a row", "settle_sum", "d")]
    print(f"{'segment (right H)':<58s}" + "".join(f"{f'{s + 1} (H = {k})':>22s}" for s, k in enumerate(args.dims)))
    for label, key, fmt in rows:
        print(f"{label:<58s}" + "".join(f"{cell(key, s, fmt):>22s}" for s in range(len(args.dims))))
    ratios = [v for per_model in r["std_ratio"] for v in per_model]
    print(f"std ratio over all models and segments: {min(ratios):.1f}-{max(ratios):.1f}x"
          + (f" (authors: {PAPER['std_ratio_range'][0]}-{PAPER['std_ratio_range'][1]}x)" if paper else ""))
    print(f"per-point std of the right model: ELBO {min(r['point_std_elbo']):.2f}-{max(r['point_std_elbo']):.2f},"
          f" entropy sum {min(r['point_std_sum']):.3f}-{max(r['point_std_sum']):.3f}"
          + (" (authors: 0.71-0.74, 0.040-0.065)" if paper else ""))


if __name__ == "__main__":
    main()
