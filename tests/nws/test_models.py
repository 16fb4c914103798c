"""Networks of nws.models: official NWS kernel counts (notes/algorithms.md §1.2), standard parameter counts,
shapes for every stem, heads, and that each network learns on real digits."""

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from torch import nn

from nws import models
from tests import margin
from tests.conftest import SEED

ARCHS = ["resnet18", "resnet34", "vgg16", "mobilenet_v2"]
MOBILENET_CONFIG = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
                    (6, 320, 1, 1)]
VGG_CONFIG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


def w(c, width):
    return max(1, round(c * width))


def kernels_by_kind(net):
    """Number of k×k groups (out * in/groups) per layer kind: 'KxK', 'KxKdw' (grouped) or 'linear'."""
    counts = {}
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            key = f"{m.kernel_size[0]}x{m.kernel_size[1]}" + ("dw" if m.groups > 1 else "")
            n = m.out_channels * m.in_channels // m.groups
        elif isinstance(m, nn.Linear):
            key, n = "linear", m.out_features * m.in_features
        else:
            continue
        counts[key] = counts.get(key, 0) + n
    return counts


def n_params(net):
    return sum(p.numel() for p in net.parameters())


def resnet_expected(blocks, width, classes):
    """Kernel counts from the architecture's definition, written independently of nws.models."""
    c = [w(x, width) for x in (64, 128, 256, 512)]
    k3, k1, cin = 0, 0, c[0]
    for i, (ci, n) in enumerate(zip(c, blocks, strict=True)):
        k3 += cin * ci + ci * ci + (n - 1) * 2 * ci * ci
        if i > 0:
            k1 += cin * ci
        cin = ci
    return {"7x7": 3 * c[0], "3x3": k3, "1x1": k1, "linear": c[3] * classes}


def mobilenet_expected(width, classes):
    cin = w(32, width)
    stem, dw, pw = 3 * cin, 0, 0
    for t, c, n, _ in MOBILENET_CONFIG:
        cout = w(c, width)
        for _ in range(n):
            hidden = round(cin * t)
            pw += (cin * hidden if t != 1 else 0) + hidden * cout
            dw += hidden
            cin = cout
    pw += cin * w(1280, width)
    return {"3x3": stem, "3x3dw": dw, "1x1": pw, "linear": w(1280, width) * classes}


def vgg_expected(width, classes):
    k3, cin = 0, 3
    for v in VGG_CONFIG:
        if v != "M":
            k3 += cin * w(v, width)
            cin = w(v, width)
    return {"3x3": k3, "linear": cin * classes}


def test_resnet18_official_nws_counts():
    net = models.resnet18(num_classes=5, stem="nws", width=1.0)
    counts = kernels_by_kind(net)
    assert counts == {"7x7": 192, "3x3": 1_220_608, "1x1": 172_032, "linear": 2_560}
    assert sum(counts.values()) == 1_395_392
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules()) == 21
    assert sum(m.num_features for m in net.modules() if isinstance(m, nn.BatchNorm2d)) == 4_800
    assert net.fc.bias is None and net.num_features == 512


@pytest.mark.parametrize("width", [1.0, 0.25])
@pytest.mark.parametrize("name,blocks", [("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 4, 6, 3])])
def test_resnet_counts_match_formula(name, blocks, width):
    net = models.build(name, num_classes=7, stem="nws", width=width)
    assert kernels_by_kind(net) == resnet_expected(blocks, width, 7)
    assert sum(isinstance(m, (nn.Conv2d, nn.Linear)) for m in net.modules()) == 2 * sum(blocks) + 5


@pytest.mark.parametrize("width", [1.0, 0.25])
def test_vgg16_and_mobilenet_counts_match_formula(width):
    assert kernels_by_kind(models.vgg16(num_classes=5, width=width)) == vgg_expected(width, 5)
    assert kernels_by_kind(models.mobilenet_v2(num_classes=5, width=width)) == mobilenet_expected(width, 5)


def test_parameter_counts_match_standard_definitions():
    """torchvision's published totals (1000 classes, biased classifier) for the same definitions."""
    assert n_params(models.resnet18(1000, stem="imagenet", head_bias=True)) == 11_689_512
    assert n_params(models.resnet34(1000, stem="imagenet", head_bias=True)) == 21_797_672
    assert n_params(models.mobilenet_v2(1000, head_bias=True)) == 3_504_872
    vgg16_bn = 138_365_992
    three_fc = (512 * 7 * 7 * 4096 + 4096) + (4096 * 4096 + 4096) + (4096 * 1000 + 1000)
    conv_biases = sum(v for v in VGG_CONFIG if v != "M")
    single_fc = 512 * 1000 + 1000
    assert n_params(models.vgg16(1000, head_bias=True)) == vgg16_bn - three_fc - conv_biases + single_fc


def test_mobilenet_structure():
    net = models.mobilenet_v2(num_classes=5)
    depthwise = [m for m in net.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert len(depthwise) == 17 and all(m.groups == m.in_channels == m.out_channels for m in depthwise)
    assert sum(getattr(m, "use_residual", False) for m in net.modules()) == 10
    assert not any(isinstance(m, nn.Dropout) for m in net.modules())
    assert sum(isinstance(m, nn.ReLU6) for m in net.modules()) == 35 and net.num_features == 1280


def feature_hw(net, x):
    """Spatial size of the features right before global pooling."""
    seen = []
    net.avgpool.register_forward_hook(lambda m, i, o: seen.append(tuple(i[0].shape[2:])))
    with torch.no_grad():
        out = net.eval()(x)
    return out.shape, seen[0]


@pytest.mark.parametrize("stem,hw32,hw224", [("nws", 2, 14), ("imagenet", 1, 7), ("cifar", 4, 28)])
@pytest.mark.parametrize("name", ["resnet18", "resnet34"])
def test_resnet_stems_shapes(name, stem, hw32, hw224):
    net = models.build(name, num_classes=5, stem=stem, width=0.25)
    assert net.num_features == 128
    assert feature_hw(net, torch.randn(2, 3, 32, 32)) == ((2, 5), (hw32, hw32))
    assert feature_hw(net, torch.randn(1, 3, 224, 224)) == ((1, 5), (hw224, hw224))


def test_full_width_resnet18_forward_32():
    assert feature_hw(models.resnet18(num_classes=5), torch.randn(2, 3, 32, 32)) == ((2, 5), (2, 2))


@pytest.mark.parametrize("name,kwargs,hw32", [("vgg16", {}, 1), ("mobilenet_v2", {}, 1),
                                             ("mobilenet_v2", {"stem": "cifar"}, 2)])
def test_vgg_mobilenet_shapes(name, kwargs, hw32):
    assert feature_hw(models.build(name, num_classes=3, **kwargs), torch.randn(2, 3, 32, 32)) == ((2, 3),
                                                                                                 (hw32, hw32))
    net = models.build(name, num_classes=3, width=0.25, **kwargs)
    assert feature_hw(net, torch.randn(1, 3, 224, 224)) == ((1, 3), (7 * hw32, 7 * hw32))


@pytest.mark.parametrize("name", ARCHS)
def test_built_only_from_convertible_modules(name):
    """Only module kinds a generic converter understands; every conv but the head is followed by its BN."""
    net = models.build(name, num_classes=4, width=0.25)
    allowed = (nn.Conv2d, nn.Linear, nn.BatchNorm2d, nn.ReLU, nn.ReLU6, nn.MaxPool2d, nn.AdaptiveAvgPool2d,
               nn.Identity)
    leaves = [m for m in net.modules() if not list(m.children())]
    assert all(isinstance(m, allowed) or type(m) is nn.Sequential for m in leaves)
    mods = list(net.modules())
    convs = [i for i, m in enumerate(mods) if isinstance(m, nn.Conv2d)]
    assert convs and all(isinstance(mods[i + 1], nn.BatchNorm2d)
                         and mods[i + 1].num_features == mods[i].out_channels for i in convs)
    assert all(m.bias is None for m in mods if isinstance(m, nn.Conv2d))


def test_resnet_module_names():
    names = dict(models.resnet18(num_classes=5).named_modules())
    for key in ["conv1", "bn1", "layer1.0.conv1", "layer1.0.bn2", "layer2.0.shortcut.0",
                "layer2.0.shortcut.1", "layer4.1.conv2", "fc"]:
        assert key in names
    assert len(names["layer1.0.shortcut"]) == 0 and isinstance(names["maxpool"], nn.Identity)
    assert isinstance(models.resnet18(5, stem="imagenet").maxpool, nn.MaxPool2d)


def test_init():
    net = models.resnet18(num_classes=5)
    conv = net.layer4[1].conv2
    assert conv.weight.std().item() == pytest.approx((2 / (512 * 9)) ** 0.5, rel=0.02)
    bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
    assert all(torch.all(m.weight == 1) and torch.all(m.bias == 0) for m in bns)


@pytest.mark.parametrize("name", ARCHS)
@pytest.mark.parametrize("head_bias", [False, True])
def test_replace_head(name, head_bias):
    net = models.build(name, num_classes=5, width=0.25, head_bias=head_bias)
    body = {k: v.clone() for k, v in net.state_dict().items() if not k.startswith("fc.")}
    new = models.replace_head(net, 7)
    assert net.fc is new and isinstance(new, nn.Linear) and new.out_features == 7
    assert new.in_features == net.num_features and (new.bias is not None) == head_bias
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in body.items())
    assert net.eval()(torch.randn(1, 3, 32, 32)).shape == (1, 7)


def test_replace_head_keeps_dtype():
    net = models.resnet18(num_classes=5, width=0.25).double()
    assert models.replace_head(net, 3).weight.dtype == torch.float64
    assert net.eval()(torch.randn(1, 3, 32, 32, dtype=torch.float64)).shape == (1, 3)


@pytest.mark.parametrize("name", ARCHS)
def test_conv_head_equals_linear_head(name):
    """The official NWS head is a 1×1 conv (seed 004_ §4.3): the same map as the Linear head."""
    lin = models.build(name, num_classes=5, width=0.25).eval()
    conv = models.build(name, num_classes=5, width=0.25, head="conv").eval()
    state = lin.state_dict()
    state["fc.weight"] = state["fc.weight"][:, :, None, None]
    conv.load_state_dict(state)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.allclose(lin(x), conv(x), atol=1e-5)
    assert conv.fc.bias is None and kernels_by_kind(conv)["1x1"] >= 5 * conv.num_features
    assert models.replace_head(conv, 3).weight.shape == (3, conv.num_features, 1, 1)


def test_invalid_arguments():
    with pytest.raises(ValueError, match="resnet18.*resnet34.*vgg16.*mobilenet_v2"):
        models.build("resnet50", num_classes=5)
    with pytest.raises(ValueError, match="stem"):
        models.resnet18(num_classes=5, stem="tiny")
    with pytest.raises(ValueError, match="stem"):
        models.mobilenet_v2(num_classes=5, stem="nws")
    with pytest.raises(ValueError, match="width"):
        models.vgg16(num_classes=5, width=0)
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet34(num_classes=0)
    with pytest.raises(ValueError, match="head"):
        models.resnet18(num_classes=5, head="mlp")


def test_grayscale_input():
    net = models.resnet18(num_classes=10, stem="cifar", width=0.25, in_channels=1)
    assert net.conv1.in_channels == 1 and net(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name,kwargs", [("resnet18", {"stem": "nws"}), ("resnet34", {"stem": "nws"}),
                                         ("vgg16", {}), ("mobilenet_v2", {"stem": "cifar"}),
                                         ("fc1024", {"input_size": 32}), ("lenet300", {"input_size": 32})])
def test_learns_digits(name, kwargs):
    """Every parameter gets a gradient and a narrow network fits 40 real digits (5 classes) in a few steps."""
    torch.manual_seed(SEED)
    digits = load_digits()
    keep = torch.from_numpy(digits.target < 5)
    x = torch.from_numpy(digits.images).float()[keep][:40, None] / 16.0
    x = F.interpolate(x, size=32, mode="bilinear", align_corners=False).repeat(1, 3, 1, 1)
    y = torch.from_numpy(digits.target)[keep][:40]
    net = models.build(name, num_classes=5, width=0.25, **kwargs)
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for step in range(12):
        opt.zero_grad()
        loss = F.cross_entropy(net(x), y)
        loss.backward()
        if step == 0:
            assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())
        opt.step()
        losses.append(loss.item())
    # measured 0.002-0.14 over seeds 0-2 (MobileNetV2 the slowest); a network that does not learn stays near 1
    margin.below("last / first loss", losses[-1] / losses[0], 0.45)


def test_fully_connected_networks():
    """SupSup's FC 1024-1024 and LeNet-300-100: bias-free hidden layers, no BatchNorm, the grey image flattened (an
    RGB copy of a grey image gives the same logits), a wrong image size named."""
    torch.manual_seed(SEED)
    net = models.build("fc1024", num_classes=10)
    assert [(m.in_features, m.out_features) for m in net.modules() if isinstance(m, nn.Linear)] == \
        [(784, 1024), (1024, 1024), (1024, 10)]
    assert not any(isinstance(m, nn.BatchNorm2d) for m in net.modules()) and n_params(net) == 784 * 1024 + 1024 ** 2 \
        + 1024 * 10
    grey = torch.rand(3, 1, 28, 28)
    # the channel mean of three equal values is the value up to one rounding (measured: at most 6e-8 here)
    assert torch.allclose(net(grey.repeat(1, 3, 1, 1)), net(grey), rtol=0, atol=1e-6)
    assert net.num_features == 1024 and models.replace_head(net, 2).out_features == 2
    lenet = models.build("lenet300", num_classes=10, width=0.5)
    assert [m.out_features for m in lenet.modules() if isinstance(m, nn.Linear)] == [150, 50, 10]
    with pytest.raises(ValueError, match=r"reads 28x28 images \(model.input_size\), got \(32, 32\)"):
        net(torch.rand(1, 3, 32, 32))
