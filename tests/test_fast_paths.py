"""The performance paths must not change what is computed: the single Adam, the compiled
objectives and the validation switch are checked against Pyro's own eager versions."""

import copy

import pyro
import pyro.optim
import pytest
import torch
from pyro.infer import Trace_ELBO

from aevb import guides, inference, models
from aevb.data.dataset import as_dataset
from aevb.errors import ConfigError
from aevb.inference.loop import apply_gradients
from aevb.inference.objectives import (
    OBJECTIVES,
    make_jit_objective,
    make_objective,
    should_probe_jit,
    use_jit,
)
from aevb.inference.objectives.jit import (
    PerSignature,
    compiled_matches_eager,
    jit_meanfield,
    signature,
)
from aevb.inference.optim import Adam
from aevb.models.likelihoods import BernoulliPixels, bernoulli_log_prob_sum
from aevb.pyro_compat import compiled_loss


def _vae():
    model = models.build("vae", x_dim=16, z_dim=3, hidden=(8,))
    return model, guides.default_for(model)


def _params():
    return {k: v.detach().clone() for k, v in pyro.get_param_store().items()}


def _train(optim_step, binary_data, steps=5):
    """``steps`` Trace_ELBO steps from seed 0 with the given ``optim_step(batch)``."""
    pyro.clear_param_store()
    torch.manual_seed(0)
    model, guide = _vae()
    elbo = Trace_ELBO()
    for i in range(steps):
        x = binary_data[i * 16 : (i + 1) * 16]
        elbo.loss_and_grads(model, guide, x)
        optim_step(len(x))
    return _params()


def test_single_adam_matches_pyro_adam_bit_for_bit(binary_data):
    settings = {"lr": 1e-2, "betas": (0.9, 0.999), "eps": 1e-4}
    ours = Adam(settings["lr"], settings["betas"], settings["eps"])
    got = _train(lambda b: apply_gradients(ours, b), binary_data)

    pyros = pyro.optim.Adam(settings)  # type: ignore[attr-defined]

    def pyro_step(b):
        params = [p for _, p in pyro.get_param_store().named_parameters() if p.grad is not None]
        for p in params:
            p.grad.div_(b)
        pyros(params)
        for p in params:
            p.grad = None

    want = _train(pyro_step, binary_data)
    for name in want:
        assert torch.equal(got[name], want[name]), name


def test_adam_state_round_trips_and_reads_pyro_states(binary_data):
    ours = Adam(1e-2)
    _train(lambda b: apply_gradients(ours, b), binary_data, steps=2)
    state = ours.state_dict()
    names = set(pyro.get_param_store().keys())
    assert set(state["state"]) == names
    again = Adam(1e-3)
    again.load_state_dict(state)
    assert again.lr == 1e-2 and set(again.waiting) == names

    # a checkpoint written by pyro.optim.Adam (runs from before this optimiser)
    pyros = pyro.optim.Adam({"lr": 5e-3})  # type: ignore[attr-defined]
    model, guide = _vae()
    Trace_ELBO().loss_and_grads(model, guide, binary_data[:16])
    pyros([p for _, p in pyro.get_param_store().named_parameters()])
    old = Adam()
    old.load_state_dict(pyros.get_state())
    assert old.lr == 5e-3 and set(old.waiting) == names
    with pytest.raises(ConfigError):
        old.load_state_dict({"w": "not a state"})


def test_frozen_parameters_are_not_stepped(binary_data):
    model, guide = _vae()
    Trace_ELBO().loss_and_grads(model, guide, binary_data[:16])
    before = _params()
    apply_gradients(Adam(1e-1), 16, freeze=("encoder",))
    after = _params()
    for name in before:
        moved = not torch.equal(before[name], after[name])
        assert moved == (not name.startswith("encoder")), name
    assert all(p.grad is None for p in pyro.get_param_store().values())


#: the compiled objectives checked on a VAE here (semisupervised needs M2's partly observed
#: label: tests/test_m2.py checks its compiled form)
COMPILED = sorted(
    name for name, o in OBJECTIVES.items() if o.make_jit is not None and name != "semisupervised"
)


def test_the_registry_compiles_trace_meanfield_stl_enum_semisupervised_and_renyi():
    everything = sorted(name for name, o in OBJECTIVES.items() if o.make_jit is not None)
    assert everything == ["enum", "iwae", "meanfield", "renyi", "semisupervised", "stl", "trace"]


#: the alpha each compiled objective is checked at (the Renyi family: a positive and a
#: negative one besides iwae's 0)
ALPHAS = {"renyi": [0.5, -1.0]}


@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("name, alpha", [(n, a) for n in COMPILED for a in ALPHAS.get(n, [None])])
def test_every_compiled_objective_computes_its_eager_loss_and_gradients(
    binary_data, name, alpha, k
):
    """For every registry name with a compiled form: under one seed, the compiled loss and
    gradients equal the eager objective's (``make_objective``: Pyro's own ELBO classes), in
    float64 where the two orders of summation agree to ~1e-12."""
    model, guide = _vae()
    model.double(), guide.double()
    x = binary_data[:32].double()
    jitted = make_jit_objective(name, k, alpha=alpha)
    jitted.loss_and_grads(model, guide, x)  # compile (on a forked random stream)
    store = pyro.get_param_store()
    for p in store.values():
        p.grad = None
    torch.manual_seed(1)
    loss_jit = jitted.loss_and_grads(model, guide, x)
    grads_jit = {key: v.unconstrained().grad.clone() for key, v in store.items()}
    for p in store.values():
        p.grad = None
    torch.manual_seed(1)
    loss = make_objective(name, k, alpha).loss_and_grads(model, guide, x)
    assert loss_jit == pytest.approx(loss, rel=1e-10)
    assert set(grads_jit) == set(store.keys())
    for key, v in store.items():
        torch.testing.assert_close(grads_jit[key], v.unconstrained().grad, rtol=1e-9, atol=1e-10)


def test_meanfield_is_compiled_once_and_each_batch_shape_gets_its_own_trace(binary_data):
    model, guide = _vae()
    jitted = PerSignature(lambda: jit_meanfield(1, 1))
    for x in (binary_data[:32], binary_data[32:64], binary_data[64:84]):  # 32, 32, then 20
        jitted.loss_and_grads(model, guide, x)
    assert len(jitted.compiled) == 2
    elbo = jitted.compiled[signature((binary_data[:32],))]
    compiled_fn = compiled_loss(elbo)
    jitted.loss_and_grads(model, guide, binary_data[:32])
    assert compiled_loss(elbo) is compiled_fn  # pyro 1.9's class would re-trace here


def test_jit_selection():
    model, guide = _vae()
    assert use_jit("trace", model, guide, None)
    assert use_jit("meanfield", model, guide, None)
    assert use_jit("iwae", model, guide, None)  # aevb's compiled RenyiELBO
    assert use_jit("enum", models.build("gmvae", x_dim=16), guide, None)  # discrete y
    # the relaxed GMVAE reads an annealed temperature: not traced
    assert not use_jit("trace", models.build("gmvae", x_dim=16, relaxed=True), guide, None)
    assert not use_jit("trace", model, guide, False)
    with pytest.raises(ConfigError, match="no compiled form"):
        use_jit("enum-meanfield", model, guide, True)


def test_uneven_last_batch_trains_under_jit(binary_data):
    """70 points in batches of 32: the last batch (6 points) gets its own trace, and the
    compiled run's losses are the eager run's under the same seed, step by step; each epoch
    counts all 70 points, the last batch weighing 6 of them, and that batch's loss is the
    objective on its own 6 points."""
    model, guide = _vae()
    kw = dict(epochs=2, batch_size=32, seed=0)
    steps: dict[bool, list[float]] = {True: [], False: []}
    before_last: dict = {}
    last_batch: list[torch.Tensor] = []

    def record(jit):
        def callback(epoch, step, loss):
            steps[jit].append(loss)
            if not jit and step == 5:  # the parameters and random state the 6th step sees
                before_last["state"] = [copy.deepcopy(m.state_dict()) for m in (model, guide)]
                before_last["rng"] = torch.get_rng_state()

        return callback

    run = inference.fit(
        model, guide, binary_data[:70], "trace", jit=True, callback=record(True), **kw
    )
    hook = guide.register_forward_pre_hook(lambda m, args: last_batch.append(args[0].clone()))
    eager = inference.fit(
        model, guide, binary_data[:70], "trace", jit=False, callback=record(False), **kw
    )
    hook.remove()
    got, want = run.history["train_loss"].to_numpy(), eager.history["train_loss"].to_numpy()
    assert len(got) == 2 and abs(got - want).max() < 1e-4 * abs(want).max(), (got, want)
    assert len(steps[True]) == len(steps[False]) == 6
    for a, b in zip(steps[True], steps[False]):  # the uneven 3rd and 6th steps included
        assert a == pytest.approx(b, rel=1e-4)
    for h in (run.history, eager.history):
        assert list(h["step"]) == [3, 6] and list(h["datapoints"]) == [70, 140]
        for epoch, losses in enumerate((steps[True][:3], steps[True][3:])):
            weighted = (32 * losses[0] + 32 * losses[1] + 6 * losses[2]) / 70
            assert h["train_loss"].iloc[epoch] == pytest.approx(weighted, rel=1e-4)
    x = last_batch[-1]  # the eager 6th step's batch
    assert x.shape == (6, 16)
    for m, state in zip((model, guide), before_last["state"]):
        m.load_state_dict(state)
        m.train()
    torch.set_rng_state(before_last["rng"])
    direct = Trace_ELBO().loss(model, guide, x) / 6
    assert direct == pytest.approx(steps[False][-1], rel=1e-5)


@pytest.mark.parametrize("dim", [1, 63, 64, 130, 784])
def test_product_form_bernoulli_equals_the_elementwise_log_mass(dim):
    """The evaluation path's five-pass Bernoulli log-likelihood is the same number as
    ``Bernoulli(logits).log_prob(x).sum(-1)``: in float64 to 1e-9 (a wrong sign, group or
    tail would be off by O(1)), with logits up to +-60 so that sigmoid(|l|) products reach
    the group's floor, and broadcasting x [B, D] over particles [k, B, D] as IS does."""
    g = torch.Generator().manual_seed(dim)
    logits = torch.randn(7, 5, dim, generator=g, dtype=torch.float64) * 20
    logits[0, 0] = 60.0
    logits[0, 1] = -60.0
    x = (torch.rand(5, dim, generator=g) < 0.4).double()
    expected = torch.distributions.Bernoulli(logits=logits).log_prob(x).sum(-1)
    got = bernoulli_log_prob_sum(logits, x)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-9)
    # float32, as evaluation runs: within the elementwise form's own rounding
    got32 = bernoulli_log_prob_sum(logits.float(), x.float()).double()
    torch.testing.assert_close(got32, expected, rtol=1e-5, atol=1e-3)


def test_the_decoder_distribution_keeps_its_gradient_path_and_its_shape():
    """With a gradient asked for, BernoulliPixels is Pyro's Independent(Bernoulli) exactly
    (training is bit-identical); expanded or masked it stays a BernoulliPixels."""
    model, _ = _vae()
    z = torch.randn(4, 3)
    x = (torch.rand(4, 16) < 0.5).float()
    d = model.decode(z)
    assert isinstance(d, BernoulliPixels) and d.event_shape == (16,)
    plain = torch.distributions.Independent(
        torch.distributions.Bernoulli(logits=d.base_dist.logits), 1
    )
    assert torch.equal(d.log_prob(x), plain.log_prob(x))  # grad path: the same kernel
    with torch.no_grad():
        torch.testing.assert_close(d.log_prob(x), plain.log_prob(x), rtol=1e-6, atol=1e-5)
        expanded = d.expand(torch.Size([2, 4]))
        assert isinstance(expanded, BernoulliPixels) and expanded.log_prob(x).shape == (2, 4)


# --- a user's own pair: compiled when the compiled form reproduces the eager one ----------


def _user_model(x):
    w = pyro.param("W", 0.1 * torch.ones(x.shape[-1], 2))
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", pyro.distributions.Normal(z @ w.T, 1.0).to_event(1), obs=x)


def _user_guide(x):
    v = pyro.param("V", torch.zeros(2, x.shape[-1]))
    with pyro.plate("data", x.shape[0]):
        pyro.sample("z", pyro.distributions.Normal(x @ v.T, 1.0).to_event(1))


def _branchy_model(x):
    """Branches in Python on its data: a trace freezes the branch of the batch it saw."""
    w = pyro.param("W", 0.1 * torch.ones(x.shape[-1], 2))
    scale = 1.0 if float(x[:, 0].mean()) > 0 else 3.0
    with pyro.plate("data", x.shape[0]):
        z = pyro.sample("z", pyro.distributions.Normal(x.new_zeros(2), 1.0).to_event(1))
        pyro.sample("x", pyro.distributions.Normal(z @ w.T, scale).to_event(1), obs=x)


def _svi(model, guide, objective="trace", **settings):
    from aevb.inference.svi import FitConfig, SVIAlgorithm

    return SVIAlgorithm(model, guide, FitConfig(objective=objective, **settings))


def test_only_an_undeclared_pair_without_step_hooks_is_probed():
    vae, encoder = _vae()
    assert should_probe_jit("trace", _user_model, _user_guide, None)
    assert should_probe_jit("iwae", _user_model, encoder, None)  # the guide promises
    assert not should_probe_jit("trace", vae, encoder, None)  # both promise: compiled
    assert not should_probe_jit("trace", models.build("fa"), _user_guide, None)  # FA: no
    assert not should_probe_jit("trace", _user_model, _user_guide, False)
    assert not should_probe_jit("enum-meanfield", _user_model, _user_guide, None)  # none compiled
    gmvae = models.build("gmvae", x_dim=16)
    assert not should_probe_jit("trace", gmvae, guides.default_for(gmvae), None)


@pytest.mark.parametrize("objective, k", [("trace", 1), ("iwae", 5)])
def test_a_users_pair_is_compiled_and_trains_as_it_would_eagerly(objective, k):
    """The README's pair is probed, compiled, and trains to the eager run's losses: to float
    rounding, which also shows that the probe drew nothing from the run's random stream
    (another draw would move the losses by Monte Carlo noise, ~1e-2 here)."""
    x = torch.randn(96, 6, generator=torch.Generator().manual_seed(0))
    pyro.clear_param_store()
    alg = _svi(_user_model, _user_guide, objective, particles=k)
    alg.prepare(as_dataset(x), (x[:32],))
    assert alg.jit

    def losses(jit):
        pyro.clear_param_store()
        kw = dict(particles=k, epochs=2, batch_size=32, seed=3, progress=False, jit=jit)
        run = inference.fit(_user_model, _user_guide, x, objective, **kw)
        return run.history["train_loss"].to_numpy()

    probed, eager = losses(None), losses(False)
    assert abs(probed - eager).max() < 1e-4 * abs(eager).max(), (probed, eager)


def test_a_pair_whose_trace_differs_on_other_data_trains_eagerly_with_a_notice(capsys):
    """Batches taking the model's two branches: the compiled loss on the second is the
    first's branch replayed, so the probe keeps the eager objective and says why."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 6, generator=g)
    positive = x[:, 0].abs().unsqueeze(-1) * torch.ones(6)  # first column > 0
    negative = -positive
    pyro.clear_param_store()
    alg = _svi(_branchy_model, _user_guide)
    alg.prepare(as_dataset(negative), (positive[:32],))
    assert not alg.jit
    err = capsys.readouterr().err
    assert "training trace eagerly" in err and "batch 2: compiled loss" in err
    assert err.count("\n") == 1  # one line
    # the same model on batches of one branch only is indistinguishable from a static one;
    # the check draws nothing from the caller's random stream
    torch.manual_seed(12345)
    rng = torch.get_rng_state()
    why = compiled_matches_eager(
        make_jit_objective("trace"),
        make_objective("trace"),
        _branchy_model,
        _user_guide,
        [(positive[:32],), (positive[32:],)],
    )
    assert why is None
    assert torch.equal(torch.get_rng_state(), rng)


def test_a_probed_pair_is_checked_again_at_every_epoch_and_drops_a_stale_trace(capsys):
    """State a trace cannot see (a flag set between epochs that adds a site): the check at
    epoch 3's start finds the compiled loss stale and trains eagerly from then on."""
    flag = {"on": False}

    def model(x):
        _user_model(x)
        if flag["on"]:
            pyro.factor("extra", -x.abs().sum())

    x = torch.randn(64, 6, generator=torch.Generator().manual_seed(0))
    algs = []

    def after_step(epoch, step, loss):
        flag["on"] = epoch >= 2

    from aevb.inference import svi

    real = svi.SVIAlgorithm

    class Spy(real):  # records the algorithm fit builds
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            algs.append(self)

    svi.SVIAlgorithm = Spy
    try:
        run = inference.fit(model, _user_guide, x, "trace", epochs=3, batch_size=32,
                            progress=False, callback=after_step)  # fmt: skip
    finally:
        svi.SVIAlgorithm = real
    err = capsys.readouterr().err
    assert "training trace compiled" in err
    assert "epoch 3: training trace eagerly from now on" in err
    assert not algs[0].jit
    # the eager epoch 3 sees the extra term: its loss jumps by about E|x| summed (~4.8 / point)
    losses = run.history["train_loss"].to_numpy()
    assert losses[2] - losses[1] > 3.0, losses
