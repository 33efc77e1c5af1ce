"""The per-datapoint chain state MCEM and MCMC-refined VI share (aevb.inference.samplers.chains)."""

import torch

from aevb.inference.samplers.chains import ChainState


class _Search:
    """A sampler whose initial step-size search gives 0.5 for every chain."""

    def initial_step_size(self, latents, args, u, step_size):
        return torch.full_like(step_size, 0.5)


def test_new_chains_start_from_the_search_and_visited_ones_keep_their_step_size():
    chains = ChainState()
    chains.allocate(4, 4, torch.zeros(2, 3), 0.1)
    chains.step_size[1] = 0.2
    chains.visited[1] = True
    index = torch.tensor([0, 1])
    new = chains.new(index)
    assert new.tolist() == [True, False]
    eps = chains.start_step_sizes(_Search(), None, (), torch.zeros(2, 3), index, new, scale=2.0)
    assert torch.allclose(eps, torch.tensor([0.5, 0.4]))


def test_the_state_dict_is_step_size_and_visited_and_loads_back():
    chains = ChainState()
    chains.allocate(3, 1, torch.zeros(2, 3, dtype=torch.float64), 0.1)
    assert chains.step_size.dtype == torch.float64 and chains.step_size.shape == (1,)
    chains.visited[2] = True
    state = chains.state_dict()
    assert list(state) == ["step_size", "visited"]
    other = ChainState()
    other.allocate(3, 1, torch.zeros(1, 3), 0.3)
    other.load_state_dict(state)
    assert torch.equal(other.step_size, state["step_size"])
    assert other.visited.tolist() == [False, False, True]
    chains.acc, chains.eps = [0.5, 1.0], [0.1, 0.3]
    assert chains.means() == {"accept_prob": 0.75, "step_size": 0.2}
