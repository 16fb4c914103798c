"""`pretrain.reuse` (issue 19): a relative path is read from the runs folder and echoed; the reused outputs are
checked against the config's network when the pipeline starts, before any stage runs (another width, architecture or
input channels stop with exit 2 naming the folder and the keys); another image size passes with a note."""

from __future__ import annotations

import shutil

import pytest

import nws
from base.layout import PLAIN, POOLS
from nws.io import load_metadata, read_json
from pipeline.cli import main as nws_main
from pipeline.runner import run_pipeline
from pretrain import outputs
from tests.pipeline.fixtures import DEMO, NARROW, make_reusable

# one short task of NWS on the reused pools
TASK = [*NARROW, "incremental.methods=[nws]", "incremental.num_tasks=1", "incremental.epochs=1",
        "incremental.min_steps=0", "incremental.milestones=[]", "incremental.max_steps_per_epoch=2",
        "incremental.track=false"]


@pytest.fixture(scope="module")
def pools(tmp_path_factory):
    """runs/pools/seed0/pretrain: finished pretrain outputs of the narrowed demo network, pretrained at 32x32."""
    runs = tmp_path_factory.mktemp("reuse") / "runs"
    return runs, make_reusable(runs, "pools")


def statuses(summary: dict) -> dict[str, str]:
    return {label: v["status"] for label, v in summary.items()}


def test_a_relative_reuse_is_read_from_the_runs_folder_echoed_and_searched(pools, tmp_path, monkeypatch, capfd):
    """From a working directory without the pools, `pools/seed0/pretrain` is <runs>/pools/seed0/pretrain: echoed,
    its other image size noted, and the incremental stage searches those very pools."""
    runs, folder = pools
    monkeypatch.chdir(tmp_path)
    summary = run_pipeline(DEMO, ["name=user", "pretrain.reuse=pools/seed0/pretrain", "data.image_size=16", *TASK],
                           runs_dir=runs)
    assert statuses(summary) == {"data": "ran", "pretrain (seed 0)": "ran", "incremental (seed 0)": "ran",
                                 "report": "ran"}
    out = capfd.readouterr().out
    assert (f"[pipeline] pretrain.reuse=pools/seed0/pretrain, relative to the runs folder {runs}: the pretrain "
            f"outputs of {folder}\n") in out
    assert (f"[pipeline] note: pretrain.reuse: {folder} was pretrained on 32x32 images, this experiment uses 16x16 "
            "images (data.image_size): allowed") in out
    user = runs / "user" / "seed0"
    assert not (user / "pretrain" / POOLS).exists()  # reused, not trained
    nws_run = user / "incremental" / "nws"
    assert (nws_run / POOLS).read_bytes() == (folder / POOLS).read_bytes()
    assert read_json(nws_run / "metrics.json")["tasks"] == ["task00"]
    assert list(tmp_path.iterdir()) == []  # nothing was looked for or written in the working directory


def test_an_absolute_reuse_stays_and_the_same_image_size_has_no_note(pools, capfd):
    runs, folder = pools
    summary = run_pipeline(DEMO, ["name=same", f"pretrain.reuse={folder}", *NARROW], only="pretrain", runs_dir=runs)
    assert statuses(summary) == {"pretrain (seed 0)": "ran"}
    out = capfd.readouterr().out
    assert f"[pipeline] pretrain.reuse={folder}: the pretrain outputs of {folder}\n" in out and "note:" not in out


@pytest.mark.parametrize("override,differs", [
    ("model.width=0.25", "model.width: 0.125 there (config.json), 0.25 here"),
    ("model.arch=vgg16", "model.arch: resnet18 there (config.json), vgg16 here"),
])
def test_reused_outputs_of_another_network_stop_before_any_stage(pools, override, differs, capfd):
    runs, folder = pools
    rc = nws_main(["pipeline", "run", "-c", str(DEMO), "--runs-dir", str(runs), "name=other",
                   f"pretrain.reuse={folder}", *NARROW, override])
    err = capfd.readouterr().err
    assert rc == 2 and err.count("error:") == 1
    assert f"error: pretrain.reuse: {folder} holds pretrain outputs of another network: {differs}. Reuse" in err
    assert err.count(" there (") == 1  # only the key that differs
    assert not (runs / "other").exists()  # no stage ran, not even the data stage


def test_outputs_without_their_config_are_checked_from_the_safetensors_metadata(pools, capfd):
    runs, folder = pools
    bare = runs / "bare" / "seed0" / "pretrain"
    shutil.copytree(folder, bare)
    (bare / "config.json").unlink()
    rc = nws_main(["pipeline", "run", "-c", str(DEMO), "--runs-dir", str(runs), "name=other",
                   "pretrain.reuse=bare/seed0/pretrain", *NARROW, "model.pool_size=32"])
    assert rc == 2
    assert (f"pretrain.reuse: {bare.resolve()} holds pretrain outputs of another network: model.pool_size: 16 there "
            "(pools.safetensors), 32 here. Reuse") in capfd.readouterr().err


def test_a_backbone_of_other_input_channels_is_refused(pools, capfd):
    runs, folder = pools
    grey = runs / "grey" / "seed0" / "pretrain"
    shutil.copytree(folder, grey)
    net = nws.models.resnet18(num_classes=10, width=0.125, stem="nws", in_channels=1)
    outputs.write_plain(grey, net, load_metadata(folder / PLAIN))
    rc = nws_main(["pipeline", "run", "-c", str(DEMO), "--runs-dir", str(runs), "name=other",
                   f"pretrain.reuse={grey}", *NARROW])
    assert rc == 2
    assert (f"pretrain.reuse: {grey} holds pretrain outputs of another network: input channels: 1 there "
            "(plain_backbone.safetensors), 3 here. Reuse") in capfd.readouterr().err


def test_a_missing_reused_folder_is_named_as_resolved(pools, capfd):
    runs, _ = pools
    rc = nws_main(["pipeline", "run", "-c", str(DEMO), "--runs-dir", str(runs), "--only", "pretrain", "name=lost",
                   "pretrain.reuse=nowhere/seed0/pretrain", *NARROW])
    err = capfd.readouterr().err
    assert rc == 2 and err.count("error:") == 1
    assert f"no finished pretrain outputs in {(runs / 'nowhere' / 'seed0' / 'pretrain').resolve()}" in err
