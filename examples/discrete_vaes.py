"""Bernoulli and categorical VAEs: the ELBO converges to the entropy sum, and the held-out estimates' spread.

For decoders in the exponential family with a constant base measure whose natural parameters (logits) are
linear in the decoder's last layer, the ELBO at stationary points is mean encoder entropy - prior entropy -
expected decoder entropy (Lücke & Warnken, arXiv 2209.03077; Warnken et al., arXiv 2501.09022). Three settings,
a VAE-1 each (MLP encoder with a Gaussian q(z|x), H = 8, N(0, I) prior, MLP decoder whose last layer is linear
with a bias; Adam at a constant 1e-3, batch 128), trained with Lightning and ``EntropyMonitor``:

- ``gray``: scikit-learn's digits scaled to [0, 1], Bernoulli decoder with BCE on the gray levels;
- ``binary``: the same digits binarised at 0.5;
- ``categorical``: sequences of L = 12 tokens over C = 6 classes from a hidden Markov chain (3 hidden states,
  initial state uniform, stay with probability 0.8 else move to one of the two others, each state emitting from
  its own categorical drawn from Dirichlet(0.5)); the encoder reads them one-hot, the decoder outputs
  (B, 12, 6) class logits.

Each setting keeps a fixed 80/20 split (1,438 / 359 digits; 1,600 / 400 sequences) and trains ``--seeds``
seeds. Per epoch the script records the ``entropy/train/rel_gap`` the callback logs (the epoch's minibatch ELBOs,
one z draw per point, against the entropy sum of the same points); at ``--eval-epochs`` it computes the ELBO and the
entropy sum over all training points with 20 z draws (``F.elbo``, ``F.entropy_sum``) and their relative gap
|ELBO - sum| / |ELBO|.

Then, for the first seed's gray-digits model, the paper's Fig. 2: ten estimates each from n = 10, 100 and all
359 held-out points (shuffled, one z per point) of the sampled ELBO and of the entropy sum (its decoder entropy
taken at the z the ELBO drew, as for the paper's VAE-3), beside the importance-weighted log-likelihood (IWAE,
K = 1,000 z draws per point). Unlike a Gaussian VAE-1's, this entropy sum depends on z (through the decoder
entropy), so it is not sample-free and its advantage over the sampled ELBO is smaller. The per-point standard
deviations of both over all held-out points (one z each) are printed and returned: for n much smaller than the
held-out set they set the spread of the estimates, which ten repeats measure only to about +-25 %.

    python examples/discrete_vaes.py                  # 3 settings x 5 seeds x 500 epochs: 6 CPU min, one core
    python examples/discrete_vaes.py --epochs 300 --settings gray --seeds 1
    python examples/discrete_vaes.py --smoke          # a few seconds
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.distributions import Bernoulli, Categorical, Normal

import lightning_entropy_vae.functional as F
from lightning_entropy_vae import EntropyMonitor
from lightning_entropy_vae.data import load_digits_tensor, split_tensor

from _common import example_parser, pyplot, save_figure

NAME = "discrete_vaes"
SETTINGS = ("gray", "binary", "categorical")
LABELS = {"gray": "Bernoulli, gray digits", "binary": "Bernoulli, binarised digits",
          "categorical": "categorical, HMM sequences (L = 12, C = 6)"}
SEQ_LEN, CLASSES, STATES = 12, 6, 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = example_parser(__doc__, NAME)
    parser.add_argument("--settings", nargs="+", choices=SETTINGS, default=list(SETTINGS),
                        help="what to train (default: gray binary categorical)")
    parser.add_argument("--epochs", type=int, default=500, help="training epochs per run (default: 500)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per setting, from --seed on (default: 5)")
    parser.add_argument("--eval-epochs", type=int, nargs="+", default=[1, 2, 5, 10, 20, 50, 100, 200, 300, 500],
                        help="epochs at which the ELBO and the sum are computed on all training points"
                             " (those up to --epochs, and always the last; default: 1 2 5 10 20 50 100 ...)")
    parser.add_argument("--z-draws", type=int, default=20, help="z draws per point for those values (default: 20)")
    parser.add_argument("--sequences", type=int, default=2000, help="HMM sequences, split 80/20 (default: 2,000)")
    parser.add_argument("--latents", type=int, default=8, help="latents H (default: 8)")
    parser.add_argument("--hidden", type=int, nargs="+", default=[64, 64], help="MLP widths (default: 64 64)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate, constant (default: 1e-3)")
    parser.add_argument("--sizes", type=int, nargs="+", default=[10, 100],
                        help="held-out sample sizes n besides all points, multiples of 10 (default: 10 100)")
    parser.add_argument("--repeats", type=int, default=10, help="held-out estimates per n (default: 10)")
    parser.add_argument("--iwae-samples", type=int, default=1000, help="IWAE samples K (default: 1,000)")
    args = parser.parse_args(argv)
    if args.smoke:
        args.epochs, args.seeds, args.sequences = 10, 2, 500
        args.repeats, args.iwae_samples = 3, 50
    if args.epochs < 1 or args.seeds < 1:
        parser.error(f"--epochs and --seeds must be positive, got {args.epochs} and {args.seeds}")
    bad = [n for n in args.sizes if n <= 0 or n % 10]
    if bad:
        parser.error(f"--sizes must be positive multiples of 10, got {bad}")
    args.eval_epochs = sorted({e for e in args.eval_epochs if 1 <= e < args.epochs} | {args.epochs})
    return args


# ------------------------------------------------------------------------------------------------ data
def make_sequences(n: int, seed: int = 0) -> Tensor:
    """``n`` token sequences (n, 12) of class indices 0-5 from a 3-state hidden Markov chain (see the docstring)."""
    gen = torch.Generator().manual_seed(seed)
    transition = torch.full((STATES, STATES), 0.1) + 0.7 * torch.eye(STATES)  # stay 0.8, move 0.1 each
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        emission = torch.distributions.Dirichlet(torch.full((CLASSES,), 0.5)).sample((STATES,))  # (3, 6)
    state = torch.randint(STATES, (n,), generator=gen)
    tokens = []
    for _ in range(SEQ_LEN):
        tokens.append(torch.multinomial(emission[state], 1, generator=gen).squeeze(1))
        state = torch.multinomial(transition[state], 1, generator=gen).squeeze(1)
    return torch.stack(tokens, 1)


def make_data(setting: str, args: argparse.Namespace) -> tuple[Tensor, Tensor]:
    """Training and held-out data of a setting (a fixed split, the same for every seed)."""
    if setting == "categorical":
        return split_tensor(make_sequences(args.sequences), val_fraction=0.2, seed=0)
    x = load_digits_tensor()  # pixel / 16, in [0, 1]
    if setting == "binary":
        x = (x > 0.5).float()
    return split_tensor(x, val_fraction=0.2, seed=0)


# ----------------------------------------------------------------------------------------------- model
def mlp(sizes: list[int]) -> nn.Sequential:
    """Linear layers of the given widths, each followed by a ReLU."""
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(sizes):
        layers += [nn.Linear(a, b), nn.ReLU()]
    return nn.Sequential(*layers)


class DiscreteVAE(L.LightningModule):
    """VAE-1 with a Bernoulli (``classes=None``) or categorical decoder whose last layer is linear with a bias."""

    def __init__(self, data_shape: tuple[int, ...], latents: int, hidden: list[int], lr: float,
                 classes: int | None = None) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.data_shape, self.classes, self.lr = tuple(data_shape), classes, lr
        inputs = math.prod(data_shape) * (classes or 1)
        self.encoder = mlp([inputs, *hidden])
        self.enc_head = nn.Linear(hidden[-1], 2 * latents)
        self.decoder = mlp([latents, *hidden[::-1]])
        self.dec_head = nn.Linear(hidden[0], inputs)  # the logits: linear in the last hidden layer, with a bias

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        inputs = nn.functional.one_hot(x, self.classes).float() if self.classes else x
        mean, logvar = self.enc_head(self.encoder(inputs.flatten(1))).chunk(2, dim=-1)
        return mean, logvar

    def decode(self, z: Tensor) -> Tensor:
        """Logits (..., *data) of a Bernoulli decoder, class logits (..., *data, C) of a categorical one."""
        shape = (*self.data_shape, self.classes) if self.classes else self.data_shape
        return self.dec_head(self.decoder(z)).reshape(*z.shape[:-1], *shape)

    def log_likelihood(self, logits: Tensor, x: Tensor) -> Tensor:
        """log p(x|z) per point (the loss a user writes: BCE with logits, or cross-entropy), summed over the data."""
        if self.classes:
            nll = nn.functional.cross_entropy(logits.movedim(-1, 1), x, reduction="none")
        else:
            nll = nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="none")
        return -nll.flatten(1).sum(1)

    def step(self, x: Tensor) -> dict[str, Tensor]:
        """One z per point: the loss (minus the mean ELBO) and the step outputs ``EntropyMonitor`` reads."""
        mean, logvar = self.encode(x)
        z = mean + torch.randn_like(mean) * (0.5 * logvar).exp()
        logits = self.decode(z)
        kl = 0.5 * (mean.pow(2) + logvar.exp() - 1 - logvar).sum(1)
        elbo = self.log_likelihood(logits, x) - kl
        key = "dec_class_logits" if self.classes else "dec_logits"
        return {"loss": -elbo.mean(), "x": x, "enc_mean": mean, "enc_logvar": logvar, key: logits, "elbo": elbo}

    def training_step(self, batch: list[Tensor], batch_idx: int) -> dict[str, Tensor]:
        return self.step(batch[0])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


def decoder_key(model: DiscreteVAE) -> str:
    """The step-output key of the model's decoder logits, as ``EntropyMonitor`` and ``F.elbo`` read it."""
    return "dec_class_logits" if model.classes else "dec_logits"


@torch.no_grad()
def full_values(model: DiscreteVAE, x: Tensor, draws: int, gen: torch.Generator) -> tuple[float, float]:
    """ELBO and entropy sum (nats per point) over all of ``x`` with ``draws`` z draws per point."""
    was_training = model.training
    model.eval()
    mean, logvar = model.encode(x)
    eps = torch.randn((draws, *mean.shape), generator=gen)
    logits = model.decode(mean + eps * (0.5 * logvar).exp())  # (S, N, *data[, C])
    key = decoder_key(model)
    elbo = F.elbo(x=x, enc_mean=mean, enc_logvar=logvar, **{key: logits})
    # F.entropy_sum takes one z per point: average it over the draws
    total = torch.stack([F.entropy_sum(enc_logvar=logvar, x=x, **{key: part}) for part in logits]).mean()
    model.train(was_training)
    return float(elbo), float(total)


class GapRecorder(Callback):
    """After ``EntropyMonitor`` in the callback list: reads its train ``rel_gap`` every epoch and computes the
    ELBO and the entropy sum over all training points at the chosen epochs."""

    def __init__(self, data: Tensor, eval_epochs: list[int], draws: int, seed: int) -> None:
        self.data, self.eval_epochs, self.draws = data, set(eval_epochs), draws
        self.gen = torch.Generator().manual_seed(seed)  # its own z draws: training's random stream is untouched
        self.logged: list[float] = []
        self.full: dict[int, tuple[float, float]] = {}

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: DiscreteVAE) -> None:
        self.logged.append(float(trainer.callback_metrics["entropy/train/rel_gap"]))
        epoch = trainer.current_epoch + 1
        if epoch in self.eval_epochs:
            self.full[epoch] = full_values(pl_module, self.data, self.draws, self.gen)


def train(setting: str, train_x: Tensor, seed: int, args: argparse.Namespace) -> tuple[DiscreteVAE, GapRecorder]:
    """Fit one model with ``EntropyMonitor`` and the recorder; return it (in eval mode) and what was recorded."""
    L.seed_everything(seed, verbose=False)
    classes = CLASSES if setting == "categorical" else None
    model = DiscreteVAE(tuple(train_x.shape[1:]), args.latents, args.hidden, args.lr, classes)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(train_x), batch_size=128, shuffle=True)
    recorder = GapRecorder(train_x, args.eval_epochs, args.z_draws, seed)
    trainer = L.Trainer(max_epochs=args.epochs, callbacks=[EntropyMonitor(), recorder], logger=False,
                        accelerator="cpu", devices=1, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*does not have many workers.*")
        trainer.fit(model, loader)
    return model.eval(), recorder


def summarize(values: list[list[float]]) -> dict[str, list[float]]:
    """Median, minimum and maximum over seeds (rows) per column."""
    t = torch.tensor(values, dtype=torch.float64)
    return {"median": t.median(0).values.tolist() if len(t) % 2 else t.quantile(0.5, 0).tolist(),
            "low": t.min(0).values.tolist(), "high": t.max(0).values.tolist()}


# -------------------------------------------------------------------------------------- held-out spread
def iwae_log_likelihood(model: DiscreteVAE, x: Tensor, samples: int, gen: torch.Generator) -> Tensor:
    r"""Importance-weighted estimate of log p(x) per point (n,), with ``samples`` draws from q(z|x).

    .. math:: \log \frac1K \sum_k \frac{p(x|z_k)\,p(z_k)}{q(z_k|x)},\quad z_k \sim q(z|x)

    Written with ``torch.distributions`` (not the package's functions): the reference, not the estimate.
    For gray levels x in [0, 1] p(x|z) is the Bernoulli likelihood that the BCE loss uses.
    """
    values = []
    for part in x.split(max(1, 2_000_000 // (samples * math.prod(x.shape[1:]) * (model.classes or 1)))):
        mean, logvar = model.encode(part)
        posterior = Normal(mean, torch.exp(0.5 * logvar))
        z = mean + torch.randn((samples, *mean.shape), generator=gen) * posterior.stddev  # (K, b, H)
        logits = model.decode(z)
        if model.classes:
            log_lik = Categorical(logits=logits).log_prob(part).flatten(2).sum(-1)
        else:
            log_lik = Bernoulli(logits=logits, validate_args=False).log_prob(part).flatten(2).sum(-1)
        log_w = log_lik + Normal(0.0, 1.0).log_prob(z).sum(-1) - posterior.log_prob(z).sum(-1)
        values.append(torch.logsumexp(log_w, 0) - math.log(samples))
    return torch.cat(values)


@torch.no_grad()
def held_out_spread(model: DiscreteVAE, held_out: Tensor, args: argparse.Namespace, seed: int) -> dict:
    """``repeats`` estimates per n from a fresh shuffle of the held-out points, as ``elbo_estimation.py`` does."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    sizes = [n for n in args.sizes if n < len(held_out)] + [len(held_out)]
    est = {key: torch.zeros(len(sizes), args.repeats) for key in ("elbo", "sum", "iwae")}
    key = decoder_key(model)
    for i, n in enumerate(sizes):
        for r in range(args.repeats):
            x = held_out[torch.randperm(len(held_out), generator=gen)[:n]]
            out = model.step(x)  # one z per point, as in training
            total = F.entropy_sum(enc_logvar=out["enc_logvar"], x=x, reduction="none", **{key: out[key]})
            est["elbo"][i, r], est["sum"][i, r] = out["elbo"].mean(), total.mean()
            est["iwae"][i, r] = iwae_log_likelihood(model, x, args.iwae_samples, gen).mean()
    out = model.step(held_out)  # where the spreads come from: how much one point's value varies (one z each)
    point_sum = F.entropy_sum(enc_logvar=out["enc_logvar"], x=held_out, reduction="none", **{key: out[key]})
    result = {"sizes": sizes, "held_out": len(held_out), "iwae_samples": args.iwae_samples,
              "estimates": {k: v.tolist() for k, v in est.items()},
              "point_std_elbo": float(out["elbo"].std()), "point_std_sum": float(point_sum.std())}
    for name, v in est.items():
        result[f"{name}_mean"] = v.mean(1).tolist()
        result[f"{name}_std"] = v.std(1).tolist()
    return result


# ---------------------------------------------------------------------------------------------- figure
def log_window_median(values: list[float], factor: float = 1.25) -> list[float]:
    """At epoch e (1-based), the median of the values from epoch e / factor to e * factor: smooth on a log axis."""
    t = torch.tensor(values, dtype=torch.float64)
    return [float(t[int(e / factor) - 1 if e > factor else 0:int(e * factor)].median()) for e in range(1, len(t) + 1)]


def plot(results: dict, spread: dict | None, draws: int, path: Path) -> None:
    """The relative gap per epoch of every setting (all points; as logged) and the held-out estimates' spread."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.8), gridspec_kw={"width_ratios": [1.2, 1.2, 1]})
    left, middle, right = axes
    seeds = len(next(iter(results.values()))["seeds"])
    for j, (setting, r) in enumerate(results.items()):
        color = f"C{j}"
        full = r["rel_gap"]
        left.fill_between(r["eval_epochs"], full["low"], full["high"], color=color, alpha=0.2)
        left.plot(r["eval_epochs"], full["median"], "o-", color=color, lw=2, ms=4, label=LABELS[setting])
        logged = r["logged_abs_rel_gap"]
        epochs = list(range(1, len(logged["median"]) + 1))
        middle.fill_between(epochs, log_window_median(logged["low"]), log_window_median(logged["high"]),
                            color=color, alpha=0.15, lw=0)
        middle.plot(epochs, log_window_median(logged["median"]), color=color, lw=1.5, label=LABELS[setting])
    left.set_title(f"all training points, {draws} z draws per point\nmedian and range over {seeds} seeds",
                   fontsize="medium")
    middle.set_title(f"EntropyMonitor's |entropy/train/rel_gap| per epoch: median and range\nover {seeds} seeds,"
                     " each a running median over epochs e / 1.25 ... 1.25 e", fontsize="medium")
    left.set_ylabel("|ELBO - entropy sum| / |ELBO|")
    middle.set_ylabel("|ELBO - sum| / max(|sum|, 0.1 D)")
    low = min(ax.get_ylim()[0] for ax in (left, middle))
    for ax in (left, middle):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_ylim(max(low, 1e-4), 0.3)
        ax.set_xlabel("epoch")
        ax.grid(True, which="major", alpha=0.3)
    left.legend(fontsize="small", loc="lower left")
    if spread is not None:
        styles = {"elbo": ("sampled ELBO", "C0"), "sum": ("entropy sum", "C3"),
                  "iwae": (f"IWAE log-lik. (K = {spread['iwae_samples']})", "C2")}
        sizes, width = spread["sizes"], 0.8 / len(styles)
        for j, (name, (label, color)) in enumerate(styles.items()):
            right.bar([i + (j - 1) * width for i in range(len(sizes))], spread[f"{name}_std"], width=width,
                      color=color, label=label)
        right.set_yscale("log")
        ticks = [str(n) if n != spread["held_out"] else f"all ({n})" for n in sizes]
        right.set_xticks(range(len(sizes)), ticks)
        right.set_xlabel("held-out points n")
        right.set_ylabel("std over repeats [nats per point]")
        right.set_title("gray digits, held out: spread of the estimates", fontsize="medium")
        right.legend(fontsize="small")
    else:
        right.set_axis_off()
    save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ main
def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    seeds = list(range(args.seed, args.seed + args.seeds))
    results: dict[str, dict] = {}
    spread = None
    for setting in args.settings:
        train_x, held_out = make_data(setting, args)
        start = time.perf_counter()
        per_seed = []
        for seed in seeds:
            model, recorder = train(setting, train_x, seed, args)
            per_seed.append(recorder)
            if setting == "gray" and seed == seeds[0]:
                spread = held_out_spread(model, held_out, args, seed)
        elbo = [[rec.full[e][0] for e in args.eval_epochs] for rec in per_seed]
        total = [[rec.full[e][1] for e in args.eval_epochs] for rec in per_seed]
        rel = [[abs(a - b) / abs(a) for a, b in zip(*rows)] for rows in zip(elbo, total)]
        results[setting] = {
            "seeds": seeds, "eval_epochs": args.eval_epochs, "n_train": len(train_x), "n_held_out": len(held_out),
            "data_shape": list(train_x.shape[1:]), "elbo": elbo, "sum": total, "rel_gaps": rel,
            "rel_gap": summarize(rel), "logged_rel_gap": [rec.logged for rec in per_seed],
            "logged_abs_rel_gap": summarize([[abs(v) for v in rec.logged] for rec in per_seed]),
            "seconds": round(time.perf_counter() - start, 1)}
        report(setting, results[setting])
    if spread is not None:
        report_spread(spread)
    figure = args.out / f"{NAME}.png"
    plot(results, spread, args.z_draws, figure)
    result = {"settings": results, "held_out": spread, "figure": str(figure)}
    (args.out / f"{NAME}.json").write_text(json.dumps(result, indent=1))
    print(f"Figure and numbers: {figure.resolve()}, {NAME}.json beside it")
    return result


def report(setting: str, r: dict) -> None:
    """Print one setting's table: per evaluated epoch the ELBO, the sum, the relative gap and the logged one."""
    print(f"\n{LABELS[setting]}: {r['n_train']} training points, {len(r['seeds'])} seeds, {r['seconds']} s."
          " ELBO and entropy sum over all training points (20 z draws), nats per point; relative gap"
          " |ELBO - sum| / |ELBO| (median [min, max] over seeds); the callback's train rel_gap that epoch (median):")
    print(f"{'epoch':>6s}{'ELBO':>10s}{'sum':>10s}{'rel. gap':>10s}{'range':>20s}{'logged':>10s}")
    logged = summarize(r["logged_rel_gap"])["median"]
    elbo, total = summarize(r["elbo"])["median"], summarize(r["sum"])["median"]
    for i, e in enumerate(r["eval_epochs"]):
        g = r["rel_gap"]
        span = f"[{g['low'][i]:.2%}, {g['high'][i]:.2%}]"
        print(f"{e:>6d}{elbo[i]:10.3f}{total[i]:10.3f}{g['median'][i]:10.2%}{span:>20s}{logged[e - 1]:10.2%}")


def report_spread(s: dict) -> None:
    """Print the held-out estimates' means and standard deviations per n."""
    print(f"\nGray digits, first seed's model: {len(s['estimates']['elbo'][0])} estimates per n from"
          f" {s['held_out']} shuffled held-out points, one z per point (nats per point); IWAE with K ="
          f" {s['iwae_samples']}:")
    print(f"{'n':>6s}{'ELBO mean':>11s}{'ELBO std':>10s}{'sum mean':>10s}{'sum std':>10s}{'std ratio':>11s}"
          f"{'IWAE mean':>11s}{'IWAE std':>10s}")
    for i, n in enumerate(s["sizes"]):
        print(f"{n:>6d}{s['elbo_mean'][i]:11.3f}{s['elbo_std'][i]:10.4f}{s['sum_mean'][i]:10.3f}"
              f"{s['sum_std'][i]:10.4f}{s['elbo_std'][i] / s['sum_std'][i]:10.1f}x"
              f"{s['iwae_mean'][i]:11.3f}{s['iwae_std'][i]:10.4f}")
    print(f"Per point (all held-out points, one z each): std of the ELBO {s['point_std_elbo']:.3f}, of the entropy"
          f" sum {s['point_std_sum']:.3f}.")


if __name__ == "__main__":
    main()
