"""KSM as a plug-in: kernel-wise masks (a hard bit plus a normalised soft value per kernel) over a backbone that
never changes, 1 bit per kernel plus the soft values on disk, and a rebuilt plain model that predicts exactly as
the trained one."""

import json
import math

import pytest
import torch

from base.config import ConfigError
from incremental.loop import run, task_list
from incremental.masks import load_masks, packed_bytes
from incremental.methods import make_method
from incremental.methods._frozen_backbone import STATE, masked_layers, original_weights
from incremental.methods.ksm import MASKS, SOFT, KernelMask, KSMOptions
from nws.artifact import ArtifactError
from nws.io import load_tensors, save_tensors
from tests import margin
from tests.incremental.fixtures import make_config
from tests.incremental.test_methods import method_for, sample_batch, train_a_little
from tests.incremental.test_piggyback import (
    check_resume_is_identical,
    check_short_schedule,
    payload_bytes,
    plain_convs,
)

REAL = [[0.01, 0.004, -0.002], [0.006, 0.0, 0.003], [0.02, -0.01, 0.005], [0.001, 0.007, 0.0049]]


def test_kernel_mask_values_and_gradient():
    """Hard kernels (m >= 5e-3) get 1; the others 0.5 (m - lo) / (hi - lo) with lo, hi the min and max of the layer's
    soft part a (0 on hard kernels), and m = 0 stays 0; the gradient reaches m only through the hard part."""
    torch.manual_seed(0)
    opts = KSMOptions()
    mask = KernelMask(torch.Size([4, 3, 3, 3]), opts)
    assert mask.real.shape == (4, 3, 1, 1) and torch.equal(mask.real.detach(), torch.full((4, 3, 1, 1), 1e-2))
    with torch.no_grad():
        mask.real.copy_(torch.tensor(REAL).reshape(4, 3, 1, 1))
    lo, hi = -0.01, 0.0049
    want = [[1.0 if v >= 5e-3 else 0.0 if v == 0 else 0.5 * (v - lo) / (hi - lo) for v in row] for row in REAL]
    value = mask.value().detach().reshape(4, 3)
    assert torch.allclose(value, torch.tensor(want), atol=1e-6)
    assert value.max() == 1 and value[value < 1].max() <= 0.5 and value.min() == 0
    w, g = torch.randn(4, 3, 3, 3), torch.randn(4, 3, 3, 3)
    out = mask(w)
    assert torch.equal(out.detach(), w * value.reshape(4, 3, 1, 1))  # one value per k×k kernel
    (out * g).sum().backward()
    x = (torch.tensor(REAL) - 5e-3) * 1200
    s = torch.sigmoid(x / 100)
    want_grad = (g * w).sum((2, 3)) * s * (1 - s) * 1200 / 100
    assert torch.allclose(mask.real.grad.reshape(4, 3), want_grad, rtol=1e-5, atol=1e-7)
    hard, soft = mask.stored()
    assert torch.equal(hard, torch.tensor(REAL) >= 5e-3) and torch.equal(soft, value[~hard])


def soften(model, seed=0):
    """Push about a third of each layer's kernels below the threshold, so the soft part is exercised."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, KernelMask):
                pick = torch.rand(mod.real.shape, generator=gen) < 0.33
                low = torch.rand(mod.real.shape, generator=gen) * 0.015 - 0.01
                mod.real.copy_(torch.where(pick, low, mod.real))
    return model


def test_masks_train_and_the_backbone_stays_bit_identical(digits, pretrained, tmp_path):
    m = method_for("ksm", digits, pretrained, tmp_path)
    plain = plain_convs(pretrained)
    model = m.setup_task(0)
    trained = {id(p) for g in m.param_groups(model) for p in g["params"]}
    assert not any(id(w) in trained or w.requires_grad for w in original_weights(model).values())
    model = train_a_little(m, model, 0, steps=6)
    assert original_weights(model).keys() == plain.keys()
    assert all(torch.equal(w, plain[k]) for k, w in original_weights(model).items())  # bit-identical
    reals = [mod.real.detach() for mod in model.modules() if isinstance(mod, KernelMask)]
    assert any(not torch.equal(r, torch.full_like(r, 1e-2)) for r in reals)


@pytest.mark.parametrize("soft_dtype,itemsize", [("float32", 4), ("float16", 2)])
def test_round_trip_is_identical_and_stores_the_expected_bits(digits, pretrained, tmp_path, soft_dtype, itemsize):
    m = method_for("ksm", digits, pretrained, tmp_path, options={"ksm": {"soft_dtype": soft_dtype}})
    model = soften(train_a_little(m, m.setup_task(0), 0))
    folder = m.ctx.task_dir(0)
    m.write_artifact(model, 0, folder)
    rebuilt = m.rebuild(0, folder).eval()
    assert not any(hasattr(c, "parametrizations") for _, c in masked_layers(rebuilt))
    x = sample_batch(m, 0)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), rebuilt(x))
    plain = plain_convs(pretrained)
    hard, soft = load_masks(folder / MASKS), load_tensors(folder / SOFT)
    assert {k: tuple(v.shape) for k, v in hard.items()} == {k: tuple(w.shape[:2]) for k, w in plain.items()}
    n_soft = sum(int((~h).sum()) for h in hard.values())
    kernels = sum(w.shape[0] * w.shape[1] for w in plain.values())
    margin.above("soft kernel fraction", n_soft / kernels, 0.2)
    margin.below("soft kernel fraction", n_soft / kernels, 0.5)
    assert payload_bytes(folder / MASKS) == sum(math.ceil(w.shape[0] * w.shape[1] / 8) for w in plain.values()) \
        == packed_bytes(hard)  # 1 bit per kernel
    assert payload_bytes(folder / SOFT) == itemsize * n_soft  # one value per soft kernel, nothing for hard ones
    assert all(v.dtype == getattr(torch, soft_dtype) and 0 <= v.min() and v.max() <= 0.5 for v in soft.values())
    for name, w in plain.items():
        scale = torch.ones(hard[name].shape)
        scale[~hard[name]] = soft[name].float()
        assert torch.equal(rebuilt.state_dict()[f"{name}.weight"], w * scale[..., None, None])
    assert set(load_tensors(folder / STATE)) == {k for k in rebuilt.state_dict()
                                                if k not in {f"{n}.weight" for n in plain}}
    report = m.task_report(0, folder)
    assert report["soft_kernels"] == n_soft and report["soft_fraction"] == pytest.approx(n_soft / kernels)
    stored_bits = 8 * ((folder / MASKS).stat().st_size + (folder / SOFT).stat().st_size)
    assert report["bits_per_kernel"] == pytest.approx(stored_bits / kernels)


def test_soft_values_that_do_not_match_the_hard_bits_are_refused(digits, pretrained, tmp_path):
    m = method_for("ksm", digits, pretrained, tmp_path)
    folder = m.ctx.task_dir(0)
    m.write_artifact(soften(m.setup_task(0)), 0, folder)
    soft = load_tensors(folder / SOFT)
    soft["conv1"] = soft["conv1"][1:]
    save_tensors(folder / SOFT, soft)
    with pytest.raises(ArtifactError, match="soft.safetensors: soft values 'conv1'"):
        m.rebuild(0, folder)


@pytest.mark.parametrize("options,match", [({"mask_init": 1e-3}, "at least threshold"),
                                           ({"soft_dtype": "int8"}, "soft_dtype"), ({"temperature": 0}, "temperature"),
                                           ({"gumbel": True}, "gumbel")])
def test_options_are_validated(digits, pretrained, tmp_path, options, match):
    cfg = make_config(options={"ksm": options})
    with pytest.raises(ConfigError, match=match):
        make_method("ksm", cfg, digits, pretrained, tmp_path / "ksm", task_list(digits, None))


def test_end_to_end_two_tasks(digits, pretrained, tmp_path):
    cfg = make_config(num_tasks=2, epochs=1, max_steps_per_epoch=8,
                      options={"ksm": {"lr_mask": 1e-3, "lr_head": 1e-2}})
    run(cfg, digits, pretrained, tmp_path / "out", methods=["ksm"])
    out = tmp_path / "out" / "ksm"
    doc = json.loads((out / "metrics.json").read_text())
    assert [len(r) for r in doc["acc_matrix"]] == [2, 2]
    margin.above("ksm final avg acc", doc["final_avg_acc"], 0.75)  # 2-way digit tasks: chance 0.5
    assert doc["forgetting"] == 0.0
    mem = doc["memory_bytes"]
    assert set(mem) == {"total", "backbone", "masks", "soft", "state", "metadata"}
    assert mem["backbone"] == (out / "backbone.safetensors").stat().st_size
    assert mem["soft"] == sum((out / d / SOFT).stat().st_size for d in doc["task_dirs"])
    assert len(doc["soft_fraction_per_task"]) == 2 and doc["bits_per_kernel"] >= 1
    shared, plain = load_tensors(out / "backbone.safetensors"), plain_convs(pretrained)
    assert shared.keys() == {f"{k}.weight" for k in plain}
    assert all(torch.equal(shared[f"{k}.weight"], v) for k, v in plain.items())


def test_a_resumed_task_continues_identically(digits, pretrained, tmp_path):
    check_resume_is_identical("ksm", (MASKS, SOFT, STATE), digits, pretrained, tmp_path)


def test_official_lrs_learn_on_a_short_schedule(digits, pretrained, tmp_path):
    check_short_schedule("ksm", digits, pretrained, tmp_path)
