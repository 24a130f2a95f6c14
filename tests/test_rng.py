"""Explicit generators: seeding, state round trips, the device of a module."""

import torch

from boltzflow.rng import generator_for_module, generator_from_state, make_generator


def test_generator_round_trip():
    g = make_generator(5)
    torch.rand(10, generator=g)
    g2 = generator_from_state(g.get_state())
    assert torch.equal(torch.rand(10, generator=g), torch.rand(10, generator=g2))


def test_seeded_generators_repeat_and_differ_by_seed():
    a, b, c = make_generator(3), make_generator(3), make_generator(4)
    x = torch.rand(5, generator=a)
    assert torch.equal(x, torch.rand(5, generator=b))
    assert not torch.equal(x, torch.rand(5, generator=c))


def test_generator_for_module_follows_the_parameters():
    layer = torch.nn.Linear(2, 2)
    g = generator_for_module(layer, 7)
    assert g.device == layer.weight.device
    assert torch.equal(torch.rand(4, generator=g), torch.rand(4, generator=make_generator(7)))
    assert generator_for_module(torch.nn.Identity(), 0).device == torch.device("cpu")
