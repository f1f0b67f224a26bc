import numpy as np
import pytest
import torch

from mae.errors import UserError
from mae.pos_embed import get_2d_sincos_pos_embed


def official_formula(embed_dim: int, gh: int, gw: int) -> np.ndarray:
    """The official layout written independently: w-first meshgrid, [sin|cos] per half, zero cls row."""
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (np.arange(quarter, dtype=np.float64) / quarter)
    rows = [np.zeros(embed_dim)]
    for i in range(gh):          # patch row (h)
        for j in range(gw):      # patch column (w)
            w_part = np.concatenate([np.sin(j * omega), np.cos(j * omega)])
            h_part = np.concatenate([np.sin(i * omega), np.cos(i * omega)])
            rows.append(np.concatenate([w_part, h_part]))
    return np.stack(rows)


@pytest.mark.parametrize("embed_dim,grid", [(16, (4, 4)), (64, (14, 14)), (32, (3, 5))])
def test_table_equals_official_formula(embed_dim, grid):
    table = get_2d_sincos_pos_embed(embed_dim, grid, cls_token=True)
    assert table.dtype == torch.float32
    assert table.shape == (1 + grid[0] * grid[1], embed_dim)
    expected = official_formula(embed_dim, *grid)
    np.testing.assert_allclose(table.numpy(), expected, atol=1e-6)
    assert torch.all(table[0] == 0)


def test_int_grid_and_no_cls():
    assert torch.equal(get_2d_sincos_pos_embed(8, 3), get_2d_sincos_pos_embed(8, (3, 3), cls_token=True)[1:])


def test_layout_is_not_interleaved_and_w_comes_first():
    table = get_2d_sincos_pos_embed(8, (2, 3))
    # patch (row 1, col 2): first half encodes the column (w), second half the row (h)
    row = table[1 * 3 + 2]
    assert row[0] == pytest.approx(np.sin(2.0), abs=1e-6) and row[2] == pytest.approx(np.cos(2.0), abs=1e-6)
    assert row[4] == pytest.approx(np.sin(1.0), abs=1e-6) and row[6] == pytest.approx(np.cos(1.0), abs=1e-6)


def test_embed_dim_must_be_multiple_of_4():
    with pytest.raises(UserError, match="embed_dim=6"):
        get_2d_sincos_pos_embed(6, 4)
