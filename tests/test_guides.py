"""The guide registry (issue 34: guides had no test module): every family is built for the
models it fits, users register their own, and wrong names say what would be right."""

import pytest

from aevb import guides, models
from aevb.errors import ConfigError


@pytest.mark.parametrize("name", sorted(models.MODELS))
def test_every_model_gets_its_default_guide(name):
    model = models.build(name)
    guide = guides.default_for(model)
    assert isinstance(guide, guides.GUIDES[model.default_guide])


def test_a_user_registers_a_guide_family():
    @guides.register
    class Mine(guides.GaussianEncoder):
        name = "mine-test"

    try:
        model = models.build("vae", x_dim=4, z_dim=2)
        assert type(guides.build("mine-test", model)) is Mine
        with pytest.raises(ConfigError, match="already registered"):

            @guides.register
            class Other(guides.GaussianEncoder):
                name = "mine-test"

    finally:
        guides.GUIDES.pop("mine-test")


def test_register_refuses_a_class_without_for_model():
    class Bare:
        name = "bare"

    with pytest.raises(ConfigError, match=r"no \['for_model'\]"):
        guides.register(Bare)
    assert "bare" not in guides.GUIDES


def test_an_unknown_guide_names_the_closest_ones():
    model = models.build("vae", x_dim=4, z_dim=2)
    with pytest.raises(ConfigError, match="unknown guide 'gausian'.*did you mean 'gaussian'"):
        guides.build("gausian", model)


def test_the_linear_encoder_keeps_its_old_name():
    assert guides.LinearGaussian is guides.LinearGaussianEncoder
    assert guides.GUIDES["linear-gaussian"] is guides.LinearGaussianEncoder
