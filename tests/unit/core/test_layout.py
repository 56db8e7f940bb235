import pytest
import torch

from vlmlens.errors import InputError
from vlmlens.layout import TokenLayout

IMG = 9


def test_left_padded_batch():
    ids = torch.tensor([[0, 0, 5, IMG, IMG, IMG, IMG, 7, 8], [5, IMG, IMG, IMG, IMG, 6, 6, 7, 8]])
    layout = TokenLayout.from_ids(ids, (ids != 0).long(), image_token_id=IMG, grids=[(2, 2), (2, 2)],
                                  question_ids=[[7, 8], [6, 6, 7]])
    assert layout.padding_side == "left"
    assert [s[0].start for s in layout.images] == [3, 1]
    assert layout.last_prompt == (8, 8)
    assert layout.question == ((7, 9), (5, 8))
    assert layout.patch_position(1, 1, 1) == 4
    assert layout.image_positions(0).tolist() == [3, 4, 5, 6]
    assert layout.mask("padding")[0].tolist()[:3] == [True, True, False]


def test_right_padded_batch_last_prompt():
    ids = torch.tensor([[5, IMG, IMG, 7, 0, 0], [5, IMG, IMG, 7, 7, 7]])
    layout = TokenLayout.from_ids(ids, (ids != 0).long(), image_token_id=IMG, grids=[(1, 2), (1, 2)])
    assert layout.padding_side == "right"
    assert layout.last_prompt == (3, 5)


def test_several_images_per_sample():
    ids = torch.tensor([[IMG] * 4 + [3] + [IMG] * 6 + [4]])
    layout = TokenLayout.from_ids(ids, None, image_token_id=IMG, grids=[(2, 2), (2, 3)])
    assert [(s.start, s.stop, s.grid) for s in layout.images[0]] == [(0, 4, (2, 2)), (5, 11, (2, 3))]
    assert layout.patch_position(0, 1, 2, image=1) == 10


def test_errors():
    ids = torch.tensor([[IMG, IMG, IMG, 4]])
    with pytest.raises(InputError, match="expected 4 contiguous image tokens"):
        TokenLayout.from_ids(ids, None, image_token_id=IMG, grids=[(2, 2)])
    layout = TokenLayout.from_ids(ids, None, image_token_id=IMG, grids=[(1, 3)])
    with pytest.raises(InputError, match=r"patch \(row=1, col=0\) is outside the 1x3 patch grid"):
        layout.patch_position(0, 1, 0)
    with pytest.raises(InputError, match="grid"):
        TokenLayout.from_ids(ids, None, image_token_id=IMG, grids=[(1, 3), (1, 1)])
