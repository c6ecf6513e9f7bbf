"""Linear VAE on pPCA data: ELBO = entropy sum = the pPCA maximum log-likelihood (scikit-learn).

A linear VAE (linear encoder mean, x-independent encoder variances, linear decoder, learned decoder
variance) is probabilistic PCA's VAE: at its optimum the ELBO equals pPCA's maximum log-likelihood,
which scikit-learn computes in closed form (``PCA(n_components=H).fit(X).score(X)``, the mean
log-likelihood per point). The theorem adds that the entropy sum equals it too. This script trains
the linear VAE with full-batch Adam and prints all three, with their relative errors.

    python examples/linear_vae_ppca.py            # N = 2000, D = 10, H = 3, 3000 steps: ~15 s
    python examples/linear_vae_ppca.py --smoke    # a few seconds
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from sklearn.decomposition import PCA

import lightning_entropy_vae.functional as F
from lightning_entropy_vae.data import make_ppca_data
from lightning_entropy_vae.models import GaussianVAE

from _common import example_parser, pyplot, save_figure

NAME = "linear_vae_ppca"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--n", type=int, default=2000, help="number of data points N (default: 2000)")
    parser.add_argument("--data-dim", type=int, default=10, help="data dimension D (default: 10)")
    parser.add_argument("--latents", type=int, default=3, help="latents H of data and model (default: 3)")
    parser.add_argument("--noise-std", type=float, default=0.5, help="pPCA noise std (default: 0.5)")
    parser.add_argument("--steps", type=int, default=3000, help="full-batch Adam steps (default: 3000)")
    parser.add_argument("--lr", type=float, default=0.05, help="Adam lr, cosine decay (default: 0.05)")
    parser.add_argument("--eval-samples", type=int, default=200,
                        help="z samples per point for the final ELBO (default: 200)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.n, args.steps, args.eval_samples = 500, 300, 20
    return args


def plot(history: dict[str, list[float]], reference: float, path: Path) -> None:
    plt = pyplot()

    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(history["step"], history["elbo"], lw=0.8, label="sampled ELBO (1 sample)")
    ax.plot(history["step"], history["sum"], lw=1.5, label="entropy sum")
    ax.axhline(reference, color="k", ls="--", lw=1, label="pPCA log-likelihood (scikit-learn)")
    ax.set_ylim(reference - 2.0, reference + 0.5)
    ax.set_xlabel("Adam step (full batch)")
    ax.set_ylabel("nats per data point")
    ax.legend()
    save_figure(fig, path)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    args.out.mkdir(parents=True, exist_ok=True)

    x = make_ppca_data(args.n, data_dim=args.data_dim, latent_dim=args.latents, noise_std=args.noise_std,
                       seed=args.seed)
    reference = float(PCA(n_components=args.latents).fit(x.double().numpy()).score(x.double().numpy()))

    model = GaussianVAE(args.data_dim, args.latents, kind="linear", lr=args.lr)
    optimizer = model.configure_optimizers()
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.steps)
    history: dict[str, list[float]] = {"step": [], "elbo": [], "sum": []}
    for step in range(args.steps):
        out = model.training_step(x, step)  # the vocabulary dict plus "loss" = -ELBO
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
        schedule.step()
        if step % 10 == 0 or step == args.steps - 1:
            history["step"].append(step)
            history["elbo"].append(out["elbo"].mean().item())
            history["sum"].append(F.entropy_sum(**out).item())

    model.num_samples = args.eval_samples  # a low-noise ELBO for the comparison
    with torch.no_grad():
        out = model.step(x)
        elbo, entropy_sum = float(out["elbo"].mean()), float(F.entropy_sum(**out))
    result = {
        "ppca_log_likelihood": reference,
        "elbo": elbo,
        "entropy_sum": entropy_sum,
        "rel_error_elbo": abs(elbo - reference) / abs(reference),
        "rel_error_sum": abs(entropy_sum - reference) / abs(reference),
        "rel_gap": (elbo - entropy_sum) / abs(entropy_sum),
    }
    plot(history, reference, args.out / "linear_vae_ppca.png")

    print(f"\npPCA data N = {args.n}, D = {args.data_dim}, H = {args.latents};"
          f" linear VAE after {args.steps} steps. Nats per data point:")
    print(f"  pPCA max. log-likelihood (sklearn)  {reference:10.4f}")
    print(f"  ELBO ({args.eval_samples} z samples per point)     {elbo:10.4f}"
          f"   rel. error {result['rel_error_elbo']:.3%}")
    print(f"  entropy sum (no sampling)           {entropy_sum:10.4f}"
          f"   rel. error {result['rel_error_sum']:.3%}")
    print(f"Figure: {(args.out / 'linear_vae_ppca.png').resolve()}")
    return result


if __name__ == "__main__":
    main()
