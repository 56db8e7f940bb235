"""Drawings over the picture: the heatmap is the values given, each cell names its token."""

from __future__ import annotations

import matplotlib
import numpy as np
import pytest
import torch

from vlmlens.errors import InputError
from vlmlens.testing import tiny_images
from vlmlens.viz import layout_overlay, patch_overlay

matplotlib.use("Agg")


def test_patch_overlay_draws_the_values_over_the_image():
    image = tiny_images(1, size=32)[0]
    values = torch.arange(6.0).view(2, 3) - 2.5
    ax = patch_overlay(image, values, symmetric=True, cmap="RdBu_r", title="t")
    picture, heat = ax.get_images()
    assert picture.get_array().shape[:2] == (32, 32)
    np.testing.assert_array_equal(np.asarray(heat.get_array()), values.numpy())
    assert heat.get_extent() == picture.get_extent()  # stretched over the whole picture
    assert heat.get_clim() == (-2.5, 2.5)
    with pytest.raises(InputError, match="patch grid"):
        patch_overlay(image, torch.zeros(6))
    with pytest.raises(InputError, match="PIL image"):
        patch_overlay(np.zeros((4, 4, 3)), torch.zeros(2, 2))


def test_layout_overlay_names_each_patch_token(model, batch):
    image = tiny_images(2, seed=1)[0]
    ax = layout_overlay(image, batch.layout, sample=1)
    rows, cols = batch.layout.grid(1)
    texts = [t.get_text() for t in ax.texts]
    assert texts == [str(batch.layout.patch_position(1, r, c)) for r in range(rows) for c in range(cols)]
    with pytest.raises(InputError, match="no image 3 in sample 0"):
        layout_overlay(image, batch.layout, image_index=3)
