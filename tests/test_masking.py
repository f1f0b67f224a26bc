import pytest
import torch

from mae.errors import UserError
from mae.masking import (apply_masking, block_masking, grid_masking, ids_from_mask, num_kept, random_masking,
                         sample_ids_shuffle)


def components(mask2d: torch.Tensor) -> list[int]:
    """Sizes of the 4-connected components of True cells."""
    h, w = mask2d.shape
    seen, sizes = set(), []
    for i in range(h):
        for j in range(w):
            if mask2d[i, j] and (i, j) not in seen:
                stack, size = [(i, j)], 0
                seen.add((i, j))
                while stack:
                    a, b = stack.pop()
                    size += 1
                    for c, d in ((a + 1, b), (a - 1, b), (a, b + 1), (a, b - 1)):
                        if 0 <= c < h and 0 <= d < w and mask2d[c, d] and (c, d) not in seen:
                            seen.add((c, d))
                            stack.append((c, d))
                sizes.append(size)
    return sizes


@pytest.mark.parametrize("sampling,ratio", [("random", 0.75), ("random", 0.9), ("random", 0.4), ("block", 0.75),
                                            ("block", 0.5), ("grid", 0.75)])
def test_every_sample_keeps_exactly_int_L_times_1_minus_r(sampling, ratio):
    grid = (14, 14)
    ids_shuffle, len_keep = sample_ids_shuffle(sampling, 16, grid, ratio, generator=torch.Generator().manual_seed(0))
    assert len_keep == int(196 * (1 - ratio))
    x = torch.randn(16, 196, 8)
    kept, mask, ids_restore = apply_masking(x, ids_shuffle, len_keep)
    assert kept.shape == (16, len_keep, 8)
    assert torch.all(mask.sum(1) == 196 - len_keep)
    # the kept tokens are exactly the patches with mask 0
    for n in range(16):
        kept_ids = ids_shuffle[n, :len_keep]
        assert torch.equal(kept[n], x[n, kept_ids])
        assert sorted(kept_ids.tolist()) == torch.nonzero(mask[n] == 0).flatten().tolist()
    assert torch.equal(torch.gather(ids_shuffle, 1, ids_restore), torch.arange(196).expand(16, -1))


def test_random_masking_matches_official_argsort_of_noise():
    noise = torch.rand(3, 10)
    ids_shuffle = random_masking(3, 10, 0.6, noise=noise)
    _, mask, _ = apply_masking(torch.zeros(3, 10, 1), ids_shuffle, num_kept(10, 0.6))
    # small noise = kept: the 4 smallest noise values per row are the kept patches
    kept = torch.zeros(3, 10).scatter_(1, noise.argsort(1)[:, :4], 1.0)
    assert torch.equal(mask, 1 - kept)


def test_mask_ratio_zero_does_not_shuffle():
    ids_shuffle = random_masking(2, 9, 0.0, noise=torch.rand(2, 9))
    assert torch.equal(ids_shuffle, torch.arange(9).expand(2, -1))
    x = torch.randn(2, 9, 4)
    kept, mask, _ = apply_masking(x, ids_shuffle, num_kept(9, 0.0))
    assert torch.equal(kept, x) and mask.sum() == 0


def test_block_masks_are_contiguous_blocks():
    g = torch.Generator().manual_seed(1)
    mask = block_masking(32, (14, 14), 0.5, generator=g)
    block_counts, random_counts = [], []
    rand_mask = torch.zeros(32, 196, dtype=torch.bool).scatter_(1, torch.rand(32, 196, generator=g).argsort(1)[:, :98], True)
    for n in range(32):
        sizes = components(mask[n].view(14, 14))
        assert sum(sizes) == 98
        assert max(sizes) >= 49, sizes          # one large block-shaped region dominates
        block_counts.append(len(sizes))
        random_counts.append(len(components(rand_mask[n].view(14, 14))))
    assert sum(block_counts) / 32 <= 4
    assert sum(random_counts) / 32 > 3 * sum(block_counts) / 32


def test_block_masking_is_reproducible_with_a_generator():
    a = block_masking(4, (8, 8), 0.75, generator=torch.Generator().manual_seed(3))
    b = block_masking(4, (8, 8), 0.75, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_grid_mask_keeps_top_left_of_each_2x2_cell():
    mask = grid_masking(2, (4, 6)).view(2, 4, 6)
    expected_kept = torch.zeros(4, 6, dtype=torch.bool)
    expected_kept[0::2, 0::2] = True
    assert torch.equal(~mask[0], expected_kept) and torch.equal(mask[0], mask[1])
    ids_shuffle, len_keep = sample_ids_shuffle("grid", 2, (4, 6), 0.75)
    assert len_keep == 6
    assert ids_shuffle[0, :6].tolist() == [0, 2, 4, 12, 14, 16]


@pytest.mark.parametrize("ratio", [0.5, 0.9])
def test_grid_needs_ratio_075(ratio):
    with pytest.raises(UserError, match=r"model.mask_ratio=.* 0.75 with model.mask_sampling='grid'"):
        sample_ids_shuffle("grid", 1, (4, 4), ratio)


def test_ids_from_mask_keeps_original_order_within_groups():
    mask = torch.tensor([[True, False, True, False, False]])
    assert ids_from_mask(mask).tolist() == [[1, 3, 4, 0, 2]]


def test_grid_needs_even_grid():
    with pytest.raises(UserError, match="even sides"):
        grid_masking(1, (7, 7))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "0.75"])
def test_bad_mask_ratio(ratio):
    with pytest.raises(UserError, match=r"model.mask_ratio=.*\[0.0, 1.0\)"):
        sample_ids_shuffle("random", 1, (4, 4), ratio)


def test_unknown_sampling():
    with pytest.raises(UserError, match=r"model.mask_sampling='checker' is invalid: allowed one of 'random'"):
        sample_ids_shuffle("checker", 1, (4, 4), 0.75)


def test_noise_shape_checked():
    with pytest.raises(UserError, match=r"noise=\(2, 5\)"):
        random_masking(2, 9, 0.5, noise=torch.rand(2, 5))


def test_reconstruction_columns_say_the_share_of_patches_actually_removed():
    # The model keeps int(L * (1 - ratio)) patches: on 16 patches "85%" removes 14 (87.5%), "95%" all 16.
    # The figure's column titles said "masked 85%" (seen in results/tiny/figures/reconstruction.png).
    from mae.model import create_mae_model
    from mae.visualize import ratio_label, reconstruct
    model = create_mae_model("mae_vit_micro_patch7_dec64d1b", img_size=28, in_chans=1).eval()
    images = torch.randn(2, 1, 28, 28)
    labels = [ratio_label(r, reconstruct(model, images, r)["mask"]) for r in (0.75, 0.85, 0.95, 0.5)]
    assert labels == ["75%", "85% (14/16)", "95% (16/16)", "50%"]
