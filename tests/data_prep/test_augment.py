"""Augmentation in plain torch: random crop from padding, flip, random-resized-crop boxes, eval resize + crop."""

from __future__ import annotations

import torch

from data_prep.augment import BatchTransform, random_crop_pad, random_flip, resize_center_crop, rrc_boxes


def test_random_crop_pad_is_a_shifted_window_and_flip_mirrors():
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (16, 3, 8, 8), dtype=torch.uint8)
    crops = random_crop_pad(x, 4, gen)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for k in range(16):
        assert any(torch.equal(crops[k], padded[k, :, dy:dy + 8, dx:dx + 8]) for dy in range(9) for dx in range(9))
    flipped = random_flip(x, gen)
    same = [torch.equal(flipped[k], x[k]) for k in range(16)]
    mirrored = [torch.equal(flipped[k], x[k].flip(-1)) for k in range(16)]
    assert all(s or m for s, m in zip(same, mirrored, strict=True)) and any(mirrored) and not all(mirrored)


def test_rrc_boxes_follow_scale_and_ratio():
    gen = torch.Generator().manual_seed(0)
    boxes = rrc_boxes(100, 120, 500, gen)
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (top + h <= 100).all() and (left + w <= 120).all()
    area = h * w / (100 * 120)
    assert area.min() >= 0.07 and area.max() <= 1.0 and area.std() > 0.1
    assert ((w / h) > 0.7).all() and ((w / h) < 1.4).all()


def test_eval_transform_resizes_then_center_crops():
    x = torch.arange(2 * 3 * 256 * 256, dtype=torch.float32).reshape(2, 3, 256, 256)
    out = resize_center_crop(x, 224)
    assert out.shape == (2, 3, 224, 224) and torch.equal(out, x[..., 16:240, 16:240])
    t = BatchTransform("large", 224, [0.5] * 3, [0.25] * 3, augment=False)
    y = t(torch.full((1, 3, 300, 400), 255, dtype=torch.uint8), torch.Generator())
    assert y.shape == (1, 3, 224, 224) and torch.allclose(y, torch.full_like(y, 2.0))
