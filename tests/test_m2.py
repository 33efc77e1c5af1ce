"""M2 (Kingma et al. 2014): the model, its guide, the semisupervised objective and the data.

The objective is checked against the bounds of eqs. 6, 7 and 9 computed by quadrature on a
model with one latent dimension; the classification term's gradient against autograd of
-w * sum log q(y|x) written out by hand.
"""

from __future__ import annotations

import json
import math

import pyro
import pyro.poutine as poutine
import pytest
import torch
from pyro.infer import config_enumerate

from aevb import guides, inference, models
from aevb.cli import main
from aevb.data.dataset import UNLABELLED, Dataset
from aevb.errors import ConfigError, DataError, ObjectiveError
from aevb.inference.evaluate import bounds, log_weights
from aevb.inference.objectives import make_objective
from aevb.inference.objectives.semisupervised import ALPHA_FRACTION
from aevb.models.base import scored_data
from aevb.models.likelihoods import BernoulliPixels, SplitRows
from aevb.models.nets import one_hot, output_layer
from aevb.runs import resolve
from aevb.spec import RunSpec

C = 3


def tiny(seed: int = 0):
    torch.manual_seed(seed)
    model = models.build("m2", x_dim=4, z_dim=1, hidden=(3,), num_classes=C)
    guide = guides.default_for(model)
    for p in [*model.parameters(), *guide.parameters()]:  # away from the symmetric start
        p.data.normal_(0, 0.7)
    x = torch.bernoulli(torch.full((6, 4), 0.4, dtype=torch.float32))
    y = torch.tensor([-1, 0, 2, -1, 1, -1])
    return model, guide, x, y


def _trapezoid(n: int) -> torch.Tensor:
    w = torch.ones(n, dtype=torch.float64)
    w[0] = w[-1] = 0.5
    return w


@torch.no_grad()
def exact_terms(model, guide, x, y):
    """Per datapoint and class: L(x, y) by quadrature over z, its variance part, and q(y|x)."""
    probs = guide.class_probs(x).double()
    n, grid = x.shape[0], 4001
    loss = torch.zeros(n, C, dtype=torch.float64)
    var = torch.zeros(n, C, dtype=torch.float64)
    for c in range(C):
        y1h = one_hot(torch.full((n,), c), C, x)
        q = guide.z_posterior(guide.z_in_x(x), y1h)
        loc, scale = q.base_dist.loc[:, 0].double(), q.base_dist.scale[:, 0].double()
        t = torch.linspace(-12, 12, grid, dtype=torch.float64)
        z = loc[None] + scale[None] * t[:, None]  # [G, n]
        log_px = model.decode_given(z[..., None].float(), y1h).log_prob(x).double()  # [G, n]
        w = _trapezoid(grid)[:, None] * (t[1] - t[0]) * torch.exp(-0.5 * t[:, None] ** 2)
        w = w / math.sqrt(2 * math.pi)
        mean = (w * log_px).sum(0)
        var[:, c] = (w * log_px**2).sum(0) - mean**2
        kl = 0.5 * (loc**2 + scale**2 - 1) - torch.log(scale)
        loss[:, c] = -(mean - math.log(C) - kl)
    return loss, var, probs


def expected_loss(model, guide, x, y, weight: float, k: int):
    """The objective's exact expectation and the standard error of its k-particle estimate."""
    loss, var, q = exact_terms(model, guide, x, y)
    total, variance = 0.0, 0.0
    for i in range(x.shape[0]):
        if y[i] < 0:
            entropy = -(q[i] * q[i].log()).sum()
            total += float((q[i] * loss[i]).sum() - entropy)
            variance += float((q[i] ** 2 * var[i]).sum()) / k
        else:
            c = int(y[i])
            total += float(loss[i, c] - weight * q[i, c].log())
            variance += float(var[i, c]) / k
    return total, math.sqrt(variance)


@pytest.mark.parametrize("labels", ["mixed", "none", "all"])
def test_the_loss_is_eqs_6_7_and_9_by_quadrature(labels):
    model, guide, x, y = tiny()
    if labels == "none":
        y = torch.full_like(y, -1)
    elif labels == "all":
        y = torch.tensor([1, 0, 2, 2, 1, 0])
    k = 4000
    elbo = make_objective("semisupervised", k)
    elbo.weight = 1.7
    pyro.set_rng_seed(0)
    value = elbo.loss(model, config_enumerate(guide, "parallel", expand=True), x, y)
    want, se = expected_loss(model, guide, x, y, 1.7, k)
    assert abs(value - want) < 5 * se + 1e-3, (value, want, se)


def test_without_labels_it_is_enum_meanfield_and_with_them_the_term_is_exact():
    model, guide, x, y = tiny()
    g = config_enumerate(guide, "parallel", expand=True)
    semi = make_objective("semisupervised", 1)
    semi.weight = 2.5
    base = make_objective("enum-meanfield", 1)
    hidden = torch.full_like(y, -1)
    pyro.set_rng_seed(3)
    a = semi.loss(model, g, x, hidden)
    pyro.set_rng_seed(3)
    b = base.loss(model, g, x, hidden)
    assert a == pytest.approx(b, abs=1e-5)
    pyro.set_rng_seed(3)
    a = semi.loss(model, g, x, y)
    pyro.set_rng_seed(3)
    b = base.loss(model, g, x, y)
    log_q = guide.class_probs(x).log()
    known = y >= 0
    term = float(log_q[known, y[known]].sum().detach())
    assert a == pytest.approx(b - 2.5 * term, abs=1e-4)


def test_the_classifier_gets_the_classification_gradient():
    """On a fully labelled batch the ELBO's gradient of q(y|x) has expectation zero (the
    masked y_unobserved only weights equal terms); the objective adds exactly
    -w * grad sum_i log q(y_i | x_i) to it, on the same draws."""
    model, guide, x, _ = tiny()
    y = torch.tensor([1, 0, 2, 2, 1, 0])
    g = config_enumerate(guide, "parallel", expand=True)
    params = list(guide.y_net.parameters())
    grads = {}
    for name in ("enum-meanfield", "semisupervised"):
        elbo = make_objective(name, 1)
        elbo.weight = 0.8
        for p in [*model.parameters(), *guide.parameters()]:
            p.grad = None
        pyro.set_rng_seed(1)
        elbo.loss_and_grads(model, g, x, y)
        grads[name] = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]
    manual = -0.8 * torch.log_softmax(guide.y_net(x), -1)[torch.arange(6), y].sum()
    want = torch.autograd.grad(manual, params)
    for got, base, w in zip(grads["semisupervised"], grads["enum-meanfield"], want):
        torch.testing.assert_close(got - base, w, rtol=1e-4, atol=1e-5)
    # the ELBO's own gradient of q(y|x) here is noise around zero: small with many particles
    for p in guide.parameters():
        p.grad = None
    pyro.set_rng_seed(1)
    make_objective("enum-meanfield", 4000).loss_and_grads(model, g, x, y)
    noise = max(float(p.grad.abs().max()) for p in params)
    assert noise < 0.05 * max(float(w.abs().max()) for w in want)


@pytest.mark.parametrize("particles", [1, 2])
def test_labelled_points_are_decoded_once_and_the_others_once_per_class(particles):
    """Under enumeration the decoder sees K (C U + L) rows for U unlabelled and L labelled
    points, not K C (U + L)."""
    model, guide, x, y = tiny()
    g = config_enumerate(guide, "parallel", expand=True)
    rows: list[int] = []
    count = lambda module, args, out: rows.append(out.shape[:-1].numel())  # noqa: E731
    hook = output_layer(model.decoder).register_forward_hook(count)
    try:
        pyro.set_rng_seed(0)
        make_objective("semisupervised", particles).loss_and_grads(model, g, x, y)
    finally:
        hook.remove()
    labelled = int((y >= 0).sum())
    assert sum(rows) == particles * (C * (len(y) - labelled) + labelled)


def test_each_enumerated_copy_holds_its_own_decode():
    """The model's log p(x | y, z) per enumerated copy and datapoint is the decoder run by
    hand on that copy's (z, y), except that a labelled point reads its label with the first
    copy's z in every copy (its copies of z differ: they are independent draws of q)."""
    model, guide, x, y = tiny()
    g = config_enumerate(guide, "parallel", expand=True)
    pyro.set_rng_seed(2)
    guide_tr = poutine.trace(poutine.enum(g, first_available_dim=-2)).get_trace(x, y)
    model_tr = poutine.trace(poutine.replay(model, trace=guide_tr)).get_trace(x, y)
    z = model_tr.nodes["z"]["value"]  # [C, B, 1]
    guess = guide_tr.nodes["y_unobserved"]["value"]  # [C, B, C]: copy c proposes class c
    known = (y >= 0)[:, None]
    assert not torch.equal(z[1, known[:, 0]], z[0, known[:, 0]])
    y1h = torch.where(known, one_hot(y.clamp(min=0), C, x), guess)
    used = torch.where(known, z[:1], z)
    want = model.decode_given(used, y1h).log_prob(x)
    torch.testing.assert_close(model_tr.nodes["x"]["fn"].log_prob(x), want)
    assert [int(guess[c, 0].argmax()) for c in range(C)] == list(range(C))


@pytest.mark.parametrize("shared", [[1, 3], []])
def test_split_rows_is_the_distribution_over_all_rows_it_assembles(shared):
    """SplitRows (the labelled rows one shared part, the others one per class) scores and
    averages each row by its own part: the numbers of one distribution over all rows, with
    their gradients, also when a part has no rows (a Gaussian part too, whose torch
    Independent cannot sum an empty value); draws average to the mean; bad rows are refused."""
    torch.manual_seed(0)
    own = torch.tensor(shared, dtype=torch.long)
    rest = torch.tensor([i for i in range(5) if i not in shared], dtype=torch.long)
    base = torch.randn(3, 5, 4, requires_grad=True)
    is_own = torch.zeros(5, dtype=torch.bool).index_fill(0, own, True)
    logits = torch.where(is_own[:, None], base[:1], base)  # the shared rows: copy 0's
    x = torch.bernoulli(torch.full((5, 4), 0.5))
    for make in (
        lambda t: BernoulliPixels(pyro.distributions.Bernoulli(logits=t), 1),
        lambda t: pyro.distributions.Normal(t, 1.0).to_event(1),
    ):
        parts = (make(logits[0].index_select(0, own)), make(logits.index_select(1, rest)))
        split, whole = SplitRows(parts, (own, rest), 5), make(logits)
        assert split.batch_shape == (3, 5) and split.event_shape == (4,)
        got, want = split.log_prob(x), whole.log_prob(x)
        torch.testing.assert_close(got, want)
        grads = [torch.autograd.grad(v.sum(), base, retain_graph=True)[0] for v in (got, want)]
        torch.testing.assert_close(grads[0], grads[1])
        torch.testing.assert_close(split.mean, whole.mean)
        with torch.no_grad():  # the evaluation path (BernoulliPixels' product form)
            torch.testing.assert_close(split.log_prob(x), whole.log_prob(x))
        draws = split.sample((4000,))  # each row of each copy its own draw, of its own part
        assert draws.shape == (4000, 3, 5, 4)
        assert float((draws.mean(0) - whole.mean).abs().max()) < 5 / 4000**0.5
    with pytest.raises(ValueError, match="each once"):
        SplitRows(parts, (own, rest[:-1]), 5)


def test_the_weight_is_a_tenth_of_n_per_labelled_fraction():
    ds = Dataset(torch.rand(60, 4), torch.arange(60) % 3).keep_labels(6, seed=0)
    elbo = make_objective("semisupervised", 1)
    elbo.bind_data(ds)
    assert elbo.weight == pytest.approx(ALPHA_FRACTION * 60 / 6)


def test_alpha_fraction_is_an_option_of_the_eager_and_the_compiled_objective():
    """``objective_options = {alpha_fraction = f}`` sets w = f * N / N_labelled, in both forms
    (the compiled one is what M2 trains with by default); a negative one is refused."""
    from aevb.inference.objectives import make_jit_objective

    ds = Dataset(torch.rand(60, 4), torch.arange(60) % 3).keep_labels(6, seed=0)
    eager = make_objective("semisupervised", 1, options={"alpha_fraction": 2.3})
    compiled = make_jit_objective("semisupervised", 1, options={"alpha_fraction": 2.3})
    for elbo in (eager, compiled):
        elbo.bind_data(ds)
    assert eager.weight == pytest.approx(2.3 * 60 / 6)
    assert compiled.factory().alpha_fraction == 2.3  # each trace's ELBO gets the option
    with pytest.raises(ConfigError, match="alpha_fraction"):
        make_objective("semisupervised", 1, options={"alpha_fraction": -1.0})


def test_a_model_without_a_partly_observed_site_is_refused():
    model = models.build("vae", x_dim=4, z_dim=2, hidden=(3,))
    guide = guides.default_for(model)
    x = torch.bernoulli(torch.full((5, 4), 0.5))
    with pytest.raises(ObjectiveError, match="no partially observed site"):
        make_objective("semisupervised", 1).loss(model, guide, x)


def test_keep_labels_is_balanced_and_fixed_by_the_seed():
    y = torch.arange(200) % 4
    ds = Dataset(torch.rand(200, 3), y)
    a, b, c = ds.keep_labels(10, 0), ds.keep_labels(10, 0), ds.keep_labels(10, 1)
    assert torch.equal(a.y, b.y) and not torch.equal(a.y, c.y)
    kept = a.y[a.y != UNLABELLED]
    assert sorted(torch.bincount(kept).tolist()) == [2, 2, 3, 3]
    assert bool((kept == y[a.y != UNLABELLED]).all()) and a.num_labelled == 10
    assert torch.equal(a.x, ds.x)
    with pytest.raises(DataError, match="need 51 of class"):
        ds.keep_labels(204, 0)
    with pytest.raises(DataError, match="needs a labelled dataset"):
        Dataset(torch.rand(5, 3)).keep_labels(2)


def test_labels_must_be_classes_or_minus_one():
    model, _, x, y = tiny()
    model.check_labels(y)
    with pytest.raises(DataError, match=r"0\.\.2 or -1"):
        model.check_labels(torch.tensor([0, -2, 1]))


def test_the_estimators_score_log_p_x_with_the_labels_hidden():
    model, guide, x, y = tiny()
    labelled = Dataset(x, torch.tensor([1, 0, 2, 2, 1, 0]))
    assert bool((scored_data(model, labelled).y == UNLABELLED).all())
    a = bounds(model, guide, labelled, 50, seed=4)
    b = bounds(model, guide, labelled.without_labels(), 50, seed=4)
    torch.testing.assert_close(a.log_likelihood, b.log_likelihood)
    # the importance weights p(x, y, z) / q(y, z | x) average to p(x): the sum over y of the
    # quadrature integral, within 5 standard errors of the k-sample mean
    exact = exact_log_px(model, x).double().exp()
    k = 20000
    pyro.set_rng_seed(5)
    w = log_weights(model, guide, (x, torch.full((6,), UNLABELLED)), k).double().exp()
    se = w.std(0) / math.sqrt(k)
    assert bool(((w.mean(0) - exact).abs() < 5 * se).all()), (w.mean(0), exact, se)
    assert bool((a.elbo <= exact.log() + 1e-4).all())


@torch.no_grad()
def exact_log_px(model, x) -> torch.Tensor:
    """log sum_y p(y) int p(z) p(x|y,z) dz on a grid."""
    grid = 4001
    t = torch.linspace(-10, 10, grid, dtype=torch.float64)
    log_w = torch.log(_trapezoid(grid) * (t[1] - t[0])) - 0.5 * t**2 - 0.5 * math.log(2 * math.pi)
    per_class = []
    for c in range(C):
        y1h = one_hot(torch.full((x.shape[0],), c), C, x)
        z = t[:, None, None].expand(grid, x.shape[0], 1).float()
        lp = model.decode_given(z, y1h).log_prob(x).double()  # [G, n]
        per_class.append(torch.logsumexp(lp + log_w[:, None], 0) - math.log(C))
    return torch.logsumexp(torch.stack(per_class), 0).float()


def test_the_test_error_is_argmax_q_against_the_labels():
    model, guide, x, _ = tiny()
    y = torch.tensor([1, 0, 2, 2, 1, 0])
    metrics = model.evaluation_metrics(guide, Dataset(x, y))
    pred = guide.class_probs(x).argmax(-1)
    assert metrics["test_error"] == pytest.approx(float((pred != y).float().mean()))
    assert model.analogies(torch.zeros(2, 1)).shape == (2, C, 4)


def test_labels_reach_only_a_model_that_sums_them_out():
    spec = RunSpec.from_flat({"model": "m2", "labels": 20, "subset": 200, "seed": 3})
    r = resolve(spec)
    assert r.train.num_labelled == 20 and len(r.train) == 200
    assert RunSpec.from_dict(spec.to_dict()).data.labels == 20
    with pytest.raises(ConfigError, match="only a model that sums out a missing label"):
        resolve(RunSpec.from_flat({"model": "vae", "labels": 20}))


def test_m2_learns_to_classify_from_a_few_labels(tmp_path, capsys):
    """Trained on 3000 MNIST images with 100 labels, q(y|x) beats chance (0.9 error) on
    500 test images by far; the run directory has the analogies figure."""
    out = tmp_path / "m2"
    code = main(
        [
            "train", "m2", "--labels", "100", "--subset", "3000", "--test-subset", "500",
            "--epochs", "2", "--out", str(out), "--seed", "0",
        ]
    )  # fmt: skip
    assert code == 0
    history = (out / "history.csv").read_text().splitlines()
    header, last = history[0].split(","), history[-1].split(",")
    error = float(last[header.index("test_error")])
    assert error < 0.8, error
    assert (out / "analogies.png").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["fit"]["objective"] == "semisupervised"
    assert config["data_spec"]["labels"] == 100


def test_fit_takes_a_user_dataset_with_missing_labels():
    """A user's dataset with missing labels (-1) trains with the semisupervised objective,
    its weight bound to the data (half the points labelled: w = 0.1 * 60 / 30): one step
    over all 60 points from the given parameters reports the objective's exact expectation
    per datapoint (eqs. 6, 7 and 9 by quadrature), within its Monte Carlo error."""
    model, guide, x, y = tiny()
    ds = Dataset.from_arrays(x.repeat(10, 1), y.repeat(10).numpy())
    assert ds.num_labelled == 30
    k = 2000
    want, se = expected_loss(model, guide, x, y, ALPHA_FRACTION * 60 / 30, k)  # 6 points
    run = inference.fit(
        model, guide, ds, epochs=1, batch_size=60, num_particles=k, reset=False, progress=False
    )
    assert run.config["fit"]["objective"] == "semisupervised"
    assert list(run.history["datapoints"]) == [60]
    got = float(run.history["train_loss"].iloc[-1])  # per datapoint: 10 copies of the 6
    assert abs(got - want / 6) < 5 * se * math.sqrt(10) / 60 + 1e-4, (got, want / 6, se)


@pytest.mark.parametrize("objective", ["semisupervised", "enum"])
def test_the_compiled_objective_equals_the_eager_one_in_value_and_gradient(objective):
    """The compiled semisupervised objective (one trace of the whole loss per batch shape)
    gives the eager loss and every parameter's gradient on five batches with different
    labelled subsets (3, 3, 0, 6 and 5 of 6 labelled; a trace that had baked in one batch's
    mask would differ), to float32 rounding; the training set's weight reaches the compiled
    ELBO, and the one batch shape is traced once."""
    from aevb.data.dataset import Dataset as _Dataset
    from aevb.inference.objectives import make_jit_objective
    from aevb.inference.objectives.jit import compiled_matches_eager

    model, guide, x, y = tiny()
    g = config_enumerate(guide, "parallel", expand=True)
    batches = [(x, y), (x, torch.tensor([0, -1, -1, 1, -1, 2])), (x, torch.full_like(y, -1))]
    batches += [(x, torch.tensor([1, 0, 2, 2, 1, 0])), (x, torch.tensor([1, 0, -1, 2, 1, 0]))]
    eager, compiled = make_objective(objective, 1), make_jit_objective(objective, 1)
    ds = _Dataset(x.repeat(5, 1), torch.cat([y, torch.full((24,), -1)]))
    compiled.bind_data(ds)
    if objective == "semisupervised":
        eager.bind_data(ds)
        assert eager.weight == pytest.approx(ALPHA_FRACTION * 30 / 3)
    assert compiled_matches_eager(compiled, eager, model, g, batches, rtol=1e-5) is None
    assert len(compiled.compiled) == 1  # one shape: one trace, replayed on every mask
    (elbo,) = compiled.compiled.values()
    assert getattr(elbo, "weight", None) == getattr(eager, "weight", None)
