import torch

from mae.seeding import generator, global_rng_scope, mix_seed


def test_mix_seed_depends_on_every_value_and_their_order():
    seeds = {mix_seed(0), mix_seed(1), mix_seed(0, 1), mix_seed(1, 0), mix_seed(0, 0), mix_seed(0, 1, 2)}
    assert len(seeds) == 6
    assert mix_seed(3, 7) == mix_seed(3, 7)
    assert all(0 <= s < 2 ** 63 for s in seeds)


def test_mix_seed_tells_apart_seeds_beyond_32_bits():
    assert mix_seed(0) != mix_seed(2 ** 32)
    assert mix_seed(5, 2 ** 40) != mix_seed(5, 0)


def test_generator_streams_repeat_and_differ():
    a = torch.rand(4, generator=generator(0, 1))
    assert torch.equal(a, torch.rand(4, generator=generator(0, 1)))
    assert not torch.equal(a, torch.rand(4, generator=generator(0, 2)))


def test_global_rng_scope_restores_the_outside_streams():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    with global_rng_scope(7):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected)
    with global_rng_scope(7):
        assert torch.equal(torch.rand(3), inside)
