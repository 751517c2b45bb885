"""Images out: float images to uint8, one PNG each, grids."""

import numpy as np
import pytest
from PIL import Image

from ddpm_jax.images import make_grid, to_uint8


def test_to_uint8():
    x = np.array([[-1.0, 0.0, 1.0, 0.999]], np.float32).reshape(1, 2, 2, 1)
    np.testing.assert_array_equal(to_uint8(x).ravel(), [0, 128, 255, 255])
    wild = np.array([-3.0, 2.0], np.float32).reshape(1, 1, 2, 1)
    with pytest.raises(ValueError, match=r"outside \[-1, 1\].*clip=True"):
        to_uint8(wild)
    np.testing.assert_array_equal(to_uint8(wild, clip=True).ravel(), [0, 255])


def test_save_and_grid(tmp_path, tiny_model):
    x = np.random.default_rng(0).uniform(-1, 1, (3, 8, 8, 1)).astype(np.float32)
    paths = tiny_model.save(x, str(tmp_path / "s" / "{:03}.png"), start_idx=5)
    assert [p.name for p in paths] == ["005.png", "006.png", "007.png"]
    np.testing.assert_array_equal(np.asarray(Image.open(paths[1]))[..., None], to_uint8(x[1:2])[0])
    grid = make_grid(to_uint8(x), ncol=2, pad=1)
    assert grid.shape == (2 * 9 + 1, 2 * 9 + 1, 1)
    np.testing.assert_array_equal(grid[10:18, 1:9], to_uint8(x)[2])
