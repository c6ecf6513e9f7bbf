"""Tests of the reference GaussianVAE: shapes, variances, ELBO values, losses and the pPCA optimum."""

import copy
import math

import lightning.pytorch as pl
import pytest
import torch
from helpers import train_full_batch
from sklearn.decomposition import PCA
from torch.nn.utils import parametrize

from lightning_entropy_vae import functional as F
from lightning_entropy_vae.data import TensorDataModule, make_ppca_data
from lightning_entropy_vae.models import GaussianVAE

KINDS = ["linear", "vae0", "vae1", "vae2", "vae3"]
D, H, B = 8, 3, 5


def _model(kind, **kwargs):
    torch.manual_seed(0)
    return GaussianVAE(D, H, kind=kind, hidden_dims=(16,), **kwargs)


def _train(model, x, steps, lr=0.05):
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for i in range(steps):
        opt.zero_grad()
        model.training_step(x, i)["loss"].backward()
        opt.step()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_step_shapes(kind, num_samples):
    out = _model(kind, num_samples=num_samples).training_step((torch.randn(B, D),), 0)
    dec_shape = (B, D) if num_samples == 1 else (num_samples, B, D)
    expected = {"enc_mean": (B, H), "enc_logvar": (B, H), "dec_mean": dec_shape, "x": (B, D)}
    expected.update(elbo=(B,), loss=(), dec_logvar=dec_shape if kind == "vae3" else ())
    if kind == "vae2":
        expected["prior_logvar"] = (H,)
    assert {k: tuple(v.shape) for k, v in out.items()} == expected
    assert all(v.dtype == torch.float32 for v in out.values())


def test_step_flattens_images_and_checks_width():
    model = GaussianVAE(64, 2, hidden_dims=(8,))
    assert model.step(torch.randn(3, 8, 8))["x"].shape == (3, 64)
    with pytest.raises(
        ValueError, match=r"Expected data of shape \(batch, 64\) after flattening, but got \(3, 10\)"
    ):
        model.step(torch.randn(3, 10))


def test_vae2_columns_stay_unit_norm_and_are_optimised():
    for hidden_dims in [(16,), ()]:
        torch.manual_seed(0)
        model = GaussianVAE(D, H, kind="vae2", hidden_dims=hidden_dims)
        layer = model.first_decoder_layer
        assert parametrize.is_parametrized(layer, "weight")
        original = layer.parametrizations.weight.original
        before = original.detach().clone()
        opt = model.configure_optimizers()
        assert any(p is original for group in opt.param_groups for p in group["params"])
        x = torch.randn(64, D)
        for i in range(10):
            opt.zero_grad()
            model.training_step(x, i)["loss"].backward()
            opt.step()
        assert not torch.equal(original, before)
        assert layer.weight.shape == (hidden_dims[0] if hidden_dims else D, H)
        torch.testing.assert_close(layer.weight.norm(dim=0), torch.ones(H), atol=1e-6, rtol=0)
        assert not torch.allclose(original.norm(dim=0), torch.ones(H), atol=1e-3)


@pytest.mark.parametrize("kind", ["vae1", "vae3"])
def test_other_kinds_have_free_first_decoder_layer(kind):
    layer = _model(kind).first_decoder_layer
    assert not parametrize.is_parametrized(layer)
    assert not torch.allclose(layer.weight.norm(dim=0), torch.ones(H), atol=1e-3)


def test_vae0_decoder_logvar_is_a_fixed_buffer():
    model = _model("vae0", fixed_logvar=-1.5)
    assert not isinstance(model.dec_logvar, torch.nn.Parameter)
    assert all(p is not model.dec_logvar for p in model.parameters())
    assert "dec_logvar" in dict(model.named_buffers())
    _train(model, torch.randn(32, D), steps=5)
    out = model.step(torch.randn(4, D))
    assert out["dec_logvar"] is model.dec_logvar
    assert out["dec_logvar"].item() == -1.5


@pytest.mark.parametrize("kind", ["linear", "vae1", "vae2"])
def test_learnable_variances_are_the_live_parameters(kind):
    model = _model(kind, init_logvar=0.7)
    out = model.step(torch.randn(4, D))
    assert isinstance(out["dec_logvar"], torch.nn.Parameter)
    assert out["dec_logvar"] is model.dec_logvar
    assert out["dec_logvar"].item() == pytest.approx(0.7)
    if kind == "vae2":
        assert out["prior_logvar"] is model.prior_logvar
    _train(model, torch.randn(32, D), steps=5)
    assert model.dec_logvar.item() != pytest.approx(0.7)


def _elbo_float64(model, x, eps):
    """Closed-form per-sample ELBO in float64 for given reparameterisation noise eps (S, B, H)."""
    model = copy.deepcopy(model).double()
    x, eps = x.double(), eps.double()
    with torch.no_grad():
        if model.kind == "linear":
            nu = x @ model.encoder.weight.T + model.encoder.bias
            lv = model.enc_logvar.expand_as(nu)
        else:
            nu, lv = model.encode(x)
        z = nu + torch.exp(0.5 * lv) * eps
        if model.kind == "linear":
            mu, dlv = z @ model.decoder.weight.T + model.decoder.bias, model.dec_logvar
        else:
            mu, dlv = model.decode(z)
        dlv = torch.as_tensor(dlv).expand_as(mu)
        recon = (-0.5 * (math.log(2 * math.pi) + dlv + (x - mu) ** 2 / dlv.exp())).sum(-1).mean(0)
        plv = model.prior_logvar if model.kind == "vae2" else torch.zeros(nu.shape[-1], dtype=torch.float64)
        kl = 0.5 * ((lv.exp() + nu**2) / plv.exp() - 1 + plv - lv).sum(-1)
    return recon - kl


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_elbo_matches_float64_closed_form(kind, num_samples):
    model = _model(kind, num_samples=num_samples, init_logvar=-0.4)
    if kind == "vae2":
        with torch.no_grad():
            model.prior_logvar.copy_(torch.tensor([0.5, -0.3, 1.2]))
    x = torch.randn(B, D) * 2 + 1
    eps = torch.randn(num_samples, B, H)
    expected = _elbo_float64(model, x, eps)
    torch.testing.assert_close(model.step(x, eps=eps)["elbo"].double(), expected, rtol=1e-5, atol=1e-4)
    # the noise the model draws itself is standard normal noise of shape (S, B, H)
    torch.manual_seed(3)
    drawn = model.step(x)["elbo"]
    torch.manual_seed(3)
    torch.testing.assert_close(drawn, model.step(x, eps=torch.randn(num_samples, B, H))["elbo"])
    assert not torch.allclose(drawn, model.step(x)["elbo"])


def _kl_standard_normal(out):
    var = out["enc_logvar"].exp()
    return 0.5 * (var + out["enc_mean"] ** 2 - 1 - out["enc_logvar"]).sum(-1).mean()


def test_beta_and_warmup_change_the_loss_but_not_the_elbo():
    x = torch.randn(16, D)
    plain, weighted, warm = _model("vae1"), _model("vae1", beta=0.25), _model("vae1", kl_warmup_steps=4)
    outs = []
    for model in (plain, weighted, warm):
        torch.manual_seed(7)
        outs.append(model.training_step(x, 0))
    ref, out_beta, out_warm = outs
    kl = _kl_standard_normal(ref)
    assert kl.item() > 0.01
    torch.testing.assert_close(ref["loss"], -ref["elbo"].mean())
    for out in (out_beta, out_warm):
        torch.testing.assert_close(out["elbo"], ref["elbo"])
    torch.testing.assert_close(out_beta["loss"], ref["loss"] - 0.75 * kl)
    torch.testing.assert_close(out_warm["loss"], ref["loss"] - kl)  # KL weight 0 at step 0
    for step, weight in [(1, 0.25), (2, 0.5), (3, 0.75), (4, 1.0), (5, 1.0)]:
        torch.manual_seed(7)
        out = warm.training_step(x, step)
        torch.testing.assert_close(out["loss"], ref["loss"] - (1 - weight) * kl)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (
            {"kind": "vae4"},
            r"Expected `kind` to be one of \('linear', 'vae0', 'vae1', 'vae2', 'vae3'\), but got 'vae4'",
        ),
        ({"latent_dim": 0}, r"Expected `latent_dim` to be a positive int, but got 0\."),
        ({"data_dim": 2.5}, r"Expected `data_dim` to be a positive int, but got 2\.5\."),
        ({"num_samples": 0}, r"Expected `num_samples` to be a positive int, but got 0\."),
        ({"hidden_dims": (8, 0)}, r"Expected `hidden_dims` to be a positive int, but got 0\."),
        ({"lr": 0.0}, r"Expected `lr` to be positive, but got 0\.0\."),
        ({"beta": -1.0}, r"Expected `beta` to be non-negative, but got -1\.0\."),
        ({"kl_warmup_steps": -3}, r"Expected `kl_warmup_steps` to be a non-negative int, but got -3\."),
        ({"activation": "sigmoid"}, r"Expected `activation` to be one of .*'tanh'\), but got 'sigmoid'\."),
        ({"optimizer": "lbfgs"}, r"Expected `optimizer` to be one of \('adam', 'sgd'\), but got 'lbfgs'\."),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    args = {"data_dim": D, "latent_dim": H, **kwargs}
    with pytest.raises(ValueError, match=match):
        GaussianVAE(**args)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("num_samples", [1, 3])
def test_loss_is_minus_the_functional_elbo_of_the_returned_values(kind, num_samples):
    """The returned vocabulary is complete: the package's ``gaussian_elbo`` recomputes the step's ELBO from it."""
    model = _model(kind, num_samples=num_samples, init_logvar=-0.4)
    x = torch.randn(B, D) * 2 + 1
    out = model.training_step((x,), 0)
    vocabulary = {k: v for k, v in out.items() if k != "loss"}
    per_sample = F.gaussian_elbo(**vocabulary, reduction="none")
    torch.testing.assert_close(out["elbo"], per_sample, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(out["loss"], -F.gaussian_elbo(**vocabulary), rtol=1e-5, atol=1e-4)
    val = model.validation_step((x,), 0)
    torch.testing.assert_close(val["loss"], -F.gaussian_elbo(**{k: v for k, v in val.items() if k != "loss"}),
                               rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("kind", KINDS)
def test_optimisation_steps_raise_the_elbo(kind):
    """A few steps of the model's own optimizer raise the ELBO (scored with the same fixed noise)."""
    torch.manual_seed(0)
    model = GaussianVAE(D, H, kind=kind, hidden_dims=(16,), lr=0.02)
    x = make_ppca_data(256, data_dim=D, latent_dim=2, noise_std=0.3, seed=0)
    eps = torch.randn(4, 256, H)
    with torch.no_grad():
        before = model.step(x, eps=eps)["elbo"].mean().item()
    opt = model.configure_optimizers()
    losses = []
    for i in range(40):
        opt.zero_grad()
        loss = model.training_step(x, i)["loss"]
        loss.backward()
        opt.step()
        losses.append(loss.item())
    with torch.no_grad():
        after = model.step(x, eps=eps)["elbo"].mean().item()
    assert after > before + 0.5, (before, after)
    assert sum(losses[-5:]) < sum(losses[:5])


def test_optimizer_choice_sets_the_update_rule():
    """SGD moves every parameter by -lr * grad; Adam's first step moves each entry with a gradient by about lr."""
    x = torch.randn(16, D)
    for name, lr in [("sgd", 0.1), ("adam", 0.01)]:
        model = _model("vae1", optimizer=name, lr=lr)
        opt = model.configure_optimizers()
        assert {id(p) for group in opt.param_groups for p in group["params"]} == {id(p) for p in model.parameters()}
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        opt.zero_grad()
        torch.manual_seed(1)
        model.training_step(x, 0)["loss"].backward()
        grads = {n: p.grad.detach().clone() for n, p in model.named_parameters()}
        opt.step()
        for n, p in model.named_parameters():
            step = p.detach() - before[n]
            if name == "sgd":
                torch.testing.assert_close(step, -lr * grads[n], rtol=1e-4, atol=1e-7)
            else:
                moved = grads[n].abs() > 1e-6
                torch.testing.assert_close(step[moved].abs(), torch.full_like(step[moved], lr), rtol=1e-2, atol=0)


def test_forward_is_step_and_vae3_starts_at_init_logvar():
    model = _model("vae3", init_logvar=0.7)
    x = torch.randn(B, D)
    torch.manual_seed(5)
    via_forward = model(x)
    torch.manual_seed(5)
    via_step = model.step(x)
    assert via_forward.keys() == via_step.keys()
    for key in via_step:
        torch.testing.assert_close(via_forward[key], via_step[key])
    torch.testing.assert_close(via_step["dec_logvar"], torch.full((B, D), 0.7))


def test_linear_kind_ignores_hidden_dims():
    sizes = {
        hidden: sum(p.numel() for p in GaussianVAE(D, H, kind="linear", hidden_dims=hidden).parameters())
        for hidden in [(), (16,), (64, 64)]
    }
    assert set(sizes.values()) == {D * H + H + H * D + D + H + 1}  # encoder, enc_logvar, decoder, dec_logvar


def test_trainer_fit_logs_elbo_and_warms_up_with_global_step():
    torch.manual_seed(0)
    model = GaussianVAE(D, H, kind="vae3", hidden_dims=(8,), kl_warmup_steps=100)
    dm = TensorDataModule(torch.randn(48, D), torch.randn(16, D), batch_size=16)
    trainer = pl.Trainer(
        max_epochs=2,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, dm)
    assert trainer.global_step == 6
    assert {"train/elbo", "train/loss", "val/elbo"} <= set(trainer.callback_metrics)
    # during warm-up the KL weight is below one, so the loss is below the negative ELBO
    assert trainer.callback_metrics["train/loss"] < -trainer.callback_metrics["train/elbo"]
    assert model.kl_weight(trainer.global_step) == pytest.approx(0.06)
    assert model.hparams.kind == "vae3"


def test_linear_vae_reaches_ppca_log_likelihood():
    """At its optimum the linear VAE's ELBO equals the pPCA maximum log-likelihood (scikit-learn's score)."""
    x = make_ppca_data(2000, data_dim=10, latent_dim=3, noise_std=0.5, seed=0)
    reference = PCA(n_components=3).fit(x.double().numpy()).score(x.double().numpy())
    torch.manual_seed(0)
    steps = 3000
    model = GaussianVAE(10, 3, kind="linear", lr=0.05)
    train_full_batch(model, x, steps)
    model.num_samples = 200
    with torch.no_grad():
        elbo = model.step(x)["elbo"].mean().item()
    assert abs(elbo - reference) / abs(reference) < 0.005
