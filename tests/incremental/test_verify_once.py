"""Integrity verified once per evaluation (issue 18): `evaluate_stored` checks the task folder against stored.json and
the shared files against shared.json, and the method rebuilds from those verified bytes without hashing them again
(NWS read its artifact.json twice and hashed the pools again, so one evaluation hashed indices.bin three times). A
file the evaluation reads only through the method (an earlier task of NWS's delta chain) is still checked, once; a
corrupted file is still named, as the one error of a stored task (StoredTaskError, exit code 4)."""

import sys
from collections import Counter
from pathlib import Path

import pytest

import nws.io
from incremental.evaluate import evaluate_stored
from incremental.loop import make_accelerator
from incremental.stored import SHARED, STORED, StoredTaskError, seal_shared, seal_task
from loaders import make_loader
from nws import exits
from nws.artifact import INDICES
from nws.artifact import STATE as NWS_STATE
from tests.incremental.test_methods import method_for


def count_hashes(monkeypatch) -> Counter:
    """{path: times its sha256 was computed} from now on, wherever nws.io.sha256_file was imported."""
    real, hashed = nws.io.sha256_file, Counter()

    def counting(path, *args, **kwargs):
        hashed[Path(path)] += 1
        return real(path, *args, **kwargs)

    for module in list(sys.modules.values()):
        if getattr(module, "sha256_file", None) is real:
            monkeypatch.setattr(module, "sha256_file", counting)
    return hashed


def store_two_tasks(m):
    for t in range(2):
        folder = m.ctx.task_dir(t)
        m.write_artifact(m.setup_task(t), t, folder)
        seal_task(folder, {})
        seal_shared(m.ctx.method_dir, m.shared_files())


@pytest.mark.parametrize("name,inc", [("nws", {"codec": "delta"}), ("nws", {"codec": "entropy"}), ("finetune", {}),
                                      ("piggyback", {})])
def test_one_evaluation_hashes_every_file_once(digits, pretrained, tmp_path, monkeypatch, name, inc):
    m = method_for(name, digits, pretrained, tmp_path, **inc)
    store_two_tasks(m)
    loader = make_loader(digits / m.ctx.tasks[1].name, "test", "memory", batch_size=64)
    hashed = count_hashes(monkeypatch)
    evaluate_stored(m, 1, loader, make_accelerator(m.inc))
    assert hashed and max(hashed.values()) == 1, {str(p): n for p, n in hashed.items() if n > 1}
    folder = m.ctx.task_dir(1)
    listed = {p for p in folder.iterdir() if p.name != STORED}  # stored.json lists every other file of the folder
    shared = {Path(p) for group in m.shared_files().values() for p in group}
    assert listed | shared <= set(hashed)  # verified, not skipped
    assert (folder / STORED) not in hashed and (m.ctx.method_dir / SHARED) not in hashed
    if inc.get("codec") == "delta":  # task 1 decodes against task 0's indices: read once, checked once
        assert hashed[m.ctx.task_dir(0) / INDICES] == 1 and hashed[m.ctx.task_dir(0) / NWS_STATE] == 1


@pytest.mark.parametrize("name,victim", [("nws", INDICES), ("finetune", "network.safetensors")])
def test_a_corrupted_task_is_a_stored_task_error_naming_the_file(digits, pretrained, tmp_path, name, victim):
    m = method_for(name, digits, pretrained, tmp_path)
    store_two_tasks(m)
    path = m.ctx.task_dir(0) / victim
    blob = bytearray(path.read_bytes())
    blob[len(blob) // 2] ^= 0x10
    path.write_bytes(bytes(blob))
    loader = make_loader(digits / m.ctx.tasks[0].name, "test", "memory", batch_size=64)
    with pytest.raises(StoredTaskError, match=f"{victim}: checksum mismatch") as caught:
        evaluate_stored(m, 0, loader, make_accelerator(m.inc))
    assert exits.code_of(caught.value) == exits.CORRUPTED
    if name == "nws":  # rebuilt without the loop's check, NWS's own artifact.json names it, as the same error
        with pytest.raises(StoredTaskError, match=f"{victim}: checksum mismatch"):
            m.rebuild(0, m.ctx.task_dir(0))
