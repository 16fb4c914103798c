"""WSN as a plug-in: the top-c subnetwork with a straight-through gradient, the N-bit Huffman coding of the masks
(the official code's length, decoded exactly), weights of earlier subnetworks never changed (bit for bit), a stored
task rebuilt with the trained model's logits and unchanged by later tasks, and a resumed task identical."""

import json
import math

import numpy as np
import pytest
import torch

from base.config import ConfigError
from incremental import coded
from incremental.loop import run
from incremental.masks import save_masks
from incremental.methods._wsn_huffman import block_stats, code_lengths, decode, encode, load_block, save_block
from incremental.methods.wsn import NETWORK, STATE, Subnet, subnet, subnet_layers, weight_of
from incremental.stored import promote, staged_records
from nws.artifact import ArtifactError
from nws.io import load_tensors
from tests import margin
from tests.incremental.bn_check import assert_statistics_match_weights, method_of
from tests.incremental.fixtures import make_config
from tests.incremental.test_dst import same_content, train_steps
from tests.incremental.test_methods import method_for, sample_batch
from tests.incremental.test_piggyback import check_resume_is_identical


def official_huffman_bits(symbols):
    """Length of the official Huffman_Encoding output (utils_huffman.py): merge the two least probable nodes of a
    list sorted by probability until one is left; a symbol's code length is its depth (0 for a lone symbol)."""
    counts = np.bincount(symbols)
    nodes = [(int(c), [s]) for s, c in enumerate(counts) if c]
    depth = dict.fromkeys(range(counts.size), 0)
    while len(nodes) > 1:
        nodes = sorted(nodes, key=lambda n: n[0])
        (p1, s1), (p2, s2) = nodes[0], nodes[1]
        for s in s1 + s2:
            depth[s] += 1
        nodes = [(p1 + p2, s1 + s2)] + nodes[2:]
    return sum(int(c) * depth[s] for s, c in enumerate(counts))


@pytest.mark.parametrize("alphabet,probs,n", [(2, [0.5, 0.5], 13), (4, [0.7, 0.1, 0.1, 0.1], 1000),
                                              (128, None, 3000), (8, [0.9] + [0.1 / 7] * 7, 5000),
                                              (2, [1.0, 0.0], 40), (4, None, 1)])
def test_huffman_has_the_official_length_and_decodes_exactly(alphabet, probs, n):
    symbols = np.random.default_rng(0).choice(alphabet, size=n, p=probs)
    lengths, packed, nbits = encode(symbols, alphabet)
    assert nbits == official_huffman_bits(symbols)  # any Huffman tree: the same optimal length
    assert packed.size == math.ceil(nbits / 8)
    assert np.array_equal(decode(lengths, packed, nbits, n), symbols)
    assert np.sum(2.0 ** -lengths[lengths > 0].astype(float)) <= 1  # Kraft: a prefix code


def test_code_lengths_of_a_skewed_histogram():
    assert code_lengths(np.array([5, 0, 1, 1, 2])).tolist() == [1, 0, 3, 3, 2]
    assert code_lengths(np.array([0, 9])).tolist() == [0, 1]  # a lone symbol: coded in 0 bits


def test_a_block_file_round_trips_and_counts_the_paper_way(tmp_path):
    """Tasks 0..2 of a block: one 3-bit integer per weight, Huffman-coded per layer; each task's mask comes back."""
    g = torch.Generator().manual_seed(0)
    base = {"a.weight": torch.rand(16, 8, 3, 3, generator=g) < 0.5, "b.weight": torch.rand(10, 7, generator=g) < 0.5}
    masks = [base] + [{n: torch.where(torch.rand(m.shape, generator=g) < 0.9, m, ~m) for n, m in base.items()}
                      for _ in range(2)]
    save_block(tmp_path / "b.safetensors", masks, 7, 7)
    first, back = load_block(tmp_path / "b.safetensors")
    assert first == 7 and len(back) == 3
    assert all(torch.equal(back[t][n], masks[t][n]) for t in range(3) for n in base)
    stats = block_stats(tmp_path / "b.safetensors")
    numel = sum(m.numel() for m in base.values())
    assert stats["weights"] == numel and stats["tasks"] == 3
    assert stats["code_bits"] < 0.75 * 3 * numel  # correlated masks: ~2 bits a weight for 3 tasks, not 3
    with pytest.raises(ValueError, match="1 to 7 tasks"):
        save_block(tmp_path / "c.safetensors", masks * 3, 0, 7)


def test_subnet_keeps_the_top_c_and_passes_the_gradient_straight_through():
    torch.manual_seed(0)
    w, g = torch.randn(8, 4, 3, 3), torch.randn(8, 4, 3, 3)
    sub = Subnet(w.shape, 0.3)
    mask = sub.mask()
    a = sub.scores.detach().abs().flatten()
    k = 1 + round(0.01 * float(0.7 * 100) * (a.numel() - 1))  # official percentile(|w_m|, sparsity · 100)
    assert int(mask.sum()) == a.numel() - (k - 1)
    assert a[mask.flatten()].min() >= a[~mask.flatten()].max()
    wp = w.clone().requires_grad_(True)
    out = sub(wp)
    assert torch.equal(out.detach(), w * mask)
    (out * g).sum().backward()
    assert torch.equal(wp.grad, g * mask)  # official: w_pruned = weight_mask * weight
    assert torch.allclose(sub.scores.grad, g * w * sub.scores.detach().sign())  # identity through the top-c
    assert subnet(torch.tensor([0.1, -0.5, 0.3, 0.0]), 1.0).all()  # c = 1: every weight


def wsn(digits, pretrained, tmp_path, **inc):
    return method_for("wsn", digits, pretrained, tmp_path, **inc)


def store(m, model, t):
    """write_artifact, then what the loop does once the task is sealed: promote the staged shared files."""
    m.write_artifact(model, t, m.ctx.task_dir(t))
    promote(m.ctx.method_dir, staged_records(m.ctx.method_dir, m.shared_files()), m.ctx.task_dir(t))


def test_task0_stays_bit_identical_after_task1(digits, pretrained, tmp_path):
    """Forget-free: under the paper recipe's SGD with weight decay (which pulls on every weight) task 1 never moves a
    weight of task 0's subnetwork, trains some free ones, starts from task 0's scores, and task 0's rebuilt model
    gives the trained model's logits before and after task 1, bit for bit."""
    m = wsn(digits, pretrained, tmp_path, recipe="paper", weight_decay=0.5)
    x0, x1 = sample_batch(m, 0), sample_batch(m, 1)
    model0 = train_steps(m, m.setup_task(0), 0, 4)
    store(m, model0, 0)
    with torch.no_grad():
        out0 = model0(x0)
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0)).eval()(x0), out0)
    net0 = load_tensors(tmp_path / "wsn" / NETWORK)
    mask0 = m.stored_masks(1)[0]
    scores0 = {n: layer.parametrizations.weight[0].scores.detach().clone()
               for n, layer in subnet_layers(model0).items()}
    model1 = m.setup_task(1)
    assert all(torch.equal(layer.parametrizations.weight[0].scores, scores0[n])
               for n, layer in subnet_layers(model1).items())  # the scores carry over

    def check(model, step):
        for n, layer in subnet_layers(model).items():
            assert torch.equal(weight_of(layer).detach()[mask0[n]], net0[n][mask0[n]])

    model1 = train_steps(m, model1, 1, 5, check)
    store(m, model1, 1)
    net1, masks = load_tensors(tmp_path / "wsn" / NETWORK), m.stored_masks(2)
    assert any(not torch.equal(net1[n][~mask0[n]], net0[n][~mask0[n]]) for n in net0)  # free weights trained
    assert all(torch.equal(masks[0][n], mask0[n]) for n in mask0)
    assert any(bool((masks[1][n] & ~mask0[n]).any()) for n in mask0)  # task 1 chose weights of its own too
    with torch.no_grad():
        assert torch.equal(m.rebuild(0, m.ctx.task_dir(0)).eval()(x0), out0)
        assert torch.equal(m.rebuild(1, m.ctx.task_dir(1)).eval()(x1), model1(x1))


def test_stored_files_and_a_missing_block(digits, pretrained, tmp_path):
    m = wsn(digits, pretrained, tmp_path)
    model = train_steps(m, m.setup_task(0), 0, 2)
    store(m, model, 0)
    state = load_tensors(m.ctx.task_dir(0) / STATE)
    layers = set(subnet_layers(model))
    assert not set(state) & layers and {"fc.weight", "bn1.running_mean"} <= set(state)  # BN + head only
    assert set(load_tensors(tmp_path / "wsn" / NETWORK)) == layers
    assert m.shared_files()["masks"] == [m.block_path(0)]
    report = m.task_report(0, m.ctx.task_dir(0))
    assert report["density"] == pytest.approx(0.5, abs=1e-3) and report["reused_fraction"] == 0
    assert report["huffman_bits_per_weight"] == 1.0  # two symbols, half each: one bit
    m.block_path(0).unlink()
    with pytest.raises(ArtifactError, match="masks_b00.safetensors: missing"):
        m.rebuild(0, m.ctx.task_dir(0))


def test_options_are_validated(digits, pretrained, tmp_path):
    for i, bad in enumerate(({"capacity": 0}, {"capacity": 1.5}, {"huffman_bits": 0}, {"sparsity": 0.5})):
        with pytest.raises(ConfigError, match="incremental.options.wsn"):
            wsn(digits, pretrained, tmp_path / str(i), options={"wsn": bad})
    with pytest.raises(ConfigError, match="lr belong to wsn's official recipe"):
        wsn(digits, pretrained, tmp_path / "r", recipe="paper", options={"wsn": {"lr": 1e-3}})


def test_end_to_end_three_tasks_in_two_blocks(digits, pretrained, tmp_path):
    """Three tasks with N = 2 tasks per integer mask: blocks 0 (tasks 0, 1) and 1 (task 2). No forgetting, well above
    chance (0.5), BN statistics of the stored subnetwork, the masks counted once in the shared blocks."""
    cfg = make_config(num_tasks=3, epochs=1, max_steps_per_epoch=8, options={"wsn": {"huffman_bits": 2}})
    doc = run(cfg, digits, pretrained, tmp_path, methods=["wsn"])["wsn"]
    out = tmp_path / "wsn"
    R = doc["acc_matrix"]
    assert doc["forgetting"] == 0.0 and R[2][0] == R[1][0] == R[0][0] and R[2][1] == R[1][1]
    margin.above("wsn final avg acc", doc["final_avg_acc"], 0.85)  # measured 0.98
    mem = doc["memory_bytes"]
    assert set(mem) == {"total", "network", "masks", "state", "metadata"}
    blocks = [out / "masks_b00.safetensors", out / "masks_b01.safetensors"]
    assert mem["masks"] == sum(p.stat().st_size for p in blocks)
    assert mem["network"] == (out / NETWORK).stat().st_size
    assert [block_stats(p)["tasks"] for p in blocks] == [2, 1]
    assert doc["density_per_task"] == pytest.approx([0.5] * 3, abs=1e-3)
    assert doc["reused_fraction_per_task"][0] == 0 and doc["reused_fraction_per_task"][1] > 0.5
    assert doc["capacity_used_per_task"] == sorted(doc["capacity_used_per_task"])
    assert doc["huffman_bits_per_weight_per_task"][1] < 2  # two correlated masks: under 1 bit per task
    assert all(h >= e for h, e in zip(doc["huffman_bits_per_weight_per_task"],
                                      doc["entropy_bits_per_weight_per_task"], strict=True))
    assert sorted(p.name for p in (out / "scores").iterdir()) == ["task01.safetensors", "task02.safetensors"]
    assert_statistics_match_weights(method_of("wsn", cfg, digits, pretrained, tmp_path), 2)


def test_huffman_beats_the_projects_coding_of_the_same_masks(digits, pretrained, tmp_path):
    """The paper's N-bit Huffman against incremental.coded on the same five masks, stored the two other ways: as
    bit planes of one integer (coded.py's `planes`: the joint symbol, ANS) and as a 1-bit mask per task (coded.py's
    `bits`/`sparse`). Measured on this run: Huffman 64.3 kB, planes coded 77.3 kB, per-task masks 121.5 kB (the
    symbols' entropy: 55.7 kB). So the Huffman blocks are stored as they are, and coded.py copies them."""
    cfg = make_config(num_tasks=5, epochs=2, max_steps_per_epoch=9)
    doc = run(cfg, digits, pretrained, tmp_path, methods=["wsn"])["wsn"]
    margin.above("wsn 5 tasks final avg acc", doc["final_avg_acc"], 0.85)  # measured 0.99
    assert doc["forgetting"] == 0.0
    block = tmp_path / "wsn" / "masks_b00.safetensors"
    _, masks = load_block(block)
    save_masks(tmp_path / "planes.safetensors", {f"{n}.bit{b}": m[n] for b, m in enumerate(masks) for n in m})
    per_task = 0
    for b, m in enumerate(masks):
        save_masks(tmp_path / f"t{b}.safetensors", m)
        per_task += len(coded.encode_file(tmp_path / f"t{b}.safetensors"))
    huffman, planes = block.stat().st_size, len(coded.encode_file(tmp_path / "planes.safetensors"))
    margin.below("wsn Huffman / coded planes", huffman / planes, 0.95)  # measured 0.83
    margin.below("wsn Huffman / coded per-task masks", huffman / per_task, 0.7)  # measured 0.53
    assert doc["memory_coded_bytes"]["masks"] == doc["memory_bytes"]["masks"]


def test_a_resumed_task_continues_identically(digits, pretrained, tmp_path):
    check_resume_is_identical("wsn", (STATE,), digits, pretrained, tmp_path)
    for name in (NETWORK, "masks_b00.safetensors", "scores/task01.safetensors"):
        assert same_content(tmp_path / "a" / "wsn" / name, tmp_path / "b" / "wsn" / name)


def test_a_corrupted_scores_file_is_refused(digits, pretrained, tmp_path):
    m = wsn(digits, pretrained, tmp_path)
    store(m, train_steps(m, m.setup_task(0), 0, 2), 0)
    path = m.scores_path(0)
    path.write_bytes(path.read_bytes()[:-4] + b"\0\0\0\0")
    with pytest.raises(ArtifactError, match="scores/task00.safetensors: checksum mismatch"):
        m.setup_task(1)


def test_metrics_json_holds_the_reports(digits, pretrained, tmp_path):
    cfg = make_config(num_tasks=1, epochs=1, max_steps_per_epoch=4)
    run(cfg, digits, pretrained, tmp_path, methods=["wsn"])
    doc = json.loads((tmp_path / "wsn" / "metrics.json").read_text())
    assert doc["capacity"] == 0.5 and doc["huffman_bits"] == 7 and doc["recipe"] == "official"
    assert doc["mask_bits_per_weight_and_task"] == 1.0
    assert doc["lr_per_task"][0] >= 1e-3  # the official lr, raised on 4 steps (incremental.methods._adam_reach)


@pytest.mark.parametrize("arch", ["lenet300", "fc1024"])
def test_the_fully_connected_networks(digits, tmp_path, arch):
    """The bias-free MLPs without BatchNorm (nws/models/mlp.py) from a random plain backbone: both hidden layers
    masked, the head per task, no forgetting, well above chance (measured 0.99 and 0.98)."""
    from base.config import validate
    from pipeline.config import experiment_schema
    from pretrain import outputs
    from tests.conftest import SEED
    from tests.incremental.fixtures import DATA

    cfg = validate(experiment_schema(), {
        "name": "t", "seeds": [SEED], "data": DATA, "model": {"arch": arch, "input_size": 8, "width": 0.25},
        "incremental": {"epochs": 2, "batch_size": 32, "milestones": [1], "track": False, "augment": False,
                        "num_tasks": 2, "max_steps_per_epoch": 8}})
    torch.manual_seed(0)
    outputs.write_plain(tmp_path / "pre", cfg.model.build(10), outputs.model_metadata(cfg.model, "test", 10))
    doc = run(cfg, digits, tmp_path / "pre", tmp_path / "out", methods=["wsn"])["wsn"]
    assert doc["forgetting"] == 0.0 and doc["acc_matrix"][1][0] == doc["acc_matrix"][0][0]
    margin.above(f"wsn {arch} final avg acc", doc["final_avg_acc"], 0.85)
    assert len(doc["task_reports"][0]["layer_density"]) == 2  # the two hidden layers, not the head
