"""Checkpoint: bit-exact round trip, atomic saves, clear errors on bad directories."""
import json

import numpy as np
import pytest
import torch

from m3_ros.memory import checkpoint
from m3_ros.memory.checkpoint import CheckpointError
from m3_ros.memory.memory import M3Memory, MemoryConfig, ModelSlot
from m3_ros.memory.seeding import BIRTH_KEY, EXPOSURE_KEY
from synthetic_scene import render_view


@pytest.fixture(scope="module")
def mem():
    m = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100),
                                      "text": ModelSlot(channels=4, theta=1.0, max_rows=10)},
                              voxel_size=0.05, backend="torch"))
    m.add_keyframe(render_view(0.0)[0])
    m.train_step()
    return m


def _assert_same(a: M3Memory, b: M3Memory) -> None:
    assert set(a.params.keys()) == set(b.params.keys())
    for k in a.params.keys():
        if k == BIRTH_KEY:  # ages are not saved: every loaded Gaussian is older than any new seed
            assert bool((b.params[k] < -1e6).all())
            continue
        if k == EXPOSURE_KEY:  # nor exposures: every loaded Gaussian counts as trained
            assert bool((b.params[k] > 1e6).all())
            continue
        assert torch.equal(a.params[k].detach(), b.params[k].detach()), k
    assert set(a.W) == set(b.W) and all(torch.equal(a.W[m].detach(), b.W[m].detach()) for m in a.W)
    assert set(a.banks) == set(b.banks) and all(torch.equal(a.banks[m].rows, b.banks[m].rows) for m in a.banks)
    for m in a.banks:  # centring statistics and counts: the loaded bank admits and decodes alike
        assert torch.equal(a.banks[m].unit_rows, b.banks[m].unit_rows) and torch.equal(a.banks[m].centre, b.banks[m].centre)
        assert torch.equal(a.banks[m].counts, b.banks[m].counts) and a.banks[m].centring == b.banks[m].centring
    assert a.cfg == b.cfg and a.iteration == b.iteration


def test_round_trip_bit_exact(mem, tmp_path):
    mem.save(tmp_path / "m")
    loaded = M3Memory.load(tmp_path / "m")
    _assert_same(mem, loaded)
    kf, _ = render_view(0.0)
    ra, rb = mem.render(kf.T_world_cam, kf.K, 40, 30), loaded.render(kf.T_world_cam, kf.K, 40, 30)
    assert np.array_equal(ra["rgb"], rb["rgb"]) and torch.equal(ra["queries"]["dino"], rb["queries"]["dino"])
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["format_version"] == checkpoint.FORMAT_VERSION and meta["tau"] == 0.05
    assert meta["models"]["dino"]["theta"] == 0.9 and "quats" in meta["conventions"]
    # Saving over an existing memory replaces it; no temp or .old directory is left behind.
    mem.save(tmp_path / "m")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_killed_save_keeps_previous_memory(mem, tmp_path, monkeypatch):
    path = tmp_path / "m"
    mem.save(path)
    before = M3Memory.load(path)

    def boom(*a, **k):
        raise KeyboardInterrupt("killed while writing tensors")
    monkeypatch.setattr(checkpoint, "save_file", boom)
    with pytest.raises(KeyboardInterrupt):
        mem.save(path)
    monkeypatch.undo()
    _assert_same(before, M3Memory.load(path))

    # Killed between moving the old memory aside and moving the new one in: load finds the old one.
    real = checkpoint.os.rename
    calls = []

    def rename(src, dst):
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed between renames")
        real(src, dst)
    monkeypatch.setattr(checkpoint.os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        mem.save(path)
    monkeypatch.undo()
    assert not path.exists()
    _assert_same(before, M3Memory.load(path))


def test_bad_directories_give_clear_errors(mem, tmp_path):
    with pytest.raises(CheckpointError, match="no memory directory"):
        M3Memory.load(tmp_path / "nothing")
    path = tmp_path / "m"
    mem.save(path)
    meta = json.loads((path / "meta.json").read_text())

    (path / "meta.json").write_text(json.dumps(dict(meta, format_version=99)))
    with pytest.raises(CheckpointError, match="format_version 99"):
        M3Memory.load(path)
    (path / "meta.json").write_text(json.dumps(dict(meta, n_gaussians=meta["n_gaussians"] + 1)))
    with pytest.raises(CheckpointError, match="param/means has shape"):
        M3Memory.load(path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        M3Memory.load(path)
    (path / "meta.json").write_text(json.dumps(meta))
    data = (path / "tensors.safetensors").read_bytes()
    (path / "tensors.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="safetensors"):
        M3Memory.load(path)
    (path / "tensors.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing tensors.safetensors"):
        M3Memory.load(path)


def test_round_trip_bit_exact_with_sh_degree_2(tmp_path):
    m = M3Memory(MemoryConfig(models={"dino": ModelSlot(channels=8, theta=0.9, max_rows=100)}, voxel_size=0.05,
                              backend="torch", sh_degree=2))
    m.add_keyframe(render_view(0.0)[0])
    m.train_step()
    assert m.params["colors"].shape[1:] == (9, 3) and m.params["colors"][:, 1:].abs().max() > 0
    m.save(tmp_path / "m")
    loaded = M3Memory.load(tmp_path / "m")
    _assert_same(m, loaded)
    assert loaded.cfg.sh_degree == 2
    side = np.eye(4)
    side[0, 3] = 0.3
    kf, _ = render_view(0.0)
    for T in (kf.T_world_cam, side):
        assert np.array_equal(m.render(T, kf.K, 40, 30)["rgb"], loaded.render(T, kf.K, 40, 30)["rgb"])
    meta = json.loads((tmp_path / "m" / "meta.json").read_text())
    assert meta["sh_degree"] == 2 and meta["config"]["sh_degree"] == 2
    # Colours of the wrong degree are refused with the shape named.
    meta["config"]["sh_degree"], meta["sh_degree"] = 1, 1
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match=r"param/colors has shape \(\d+, 9, 3\), expected \(\d+, 4, 3\)"):
        M3Memory.load(tmp_path / "m")
    meta["sh_degree"] = 2
    (tmp_path / "m" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="sh_degree"):
        M3Memory.load(tmp_path / "m")


def test_version_1_checkpoint_loads_as_degree_0(mem, tmp_path):
    path = tmp_path / "m"
    mem.save(path)
    meta = json.loads((path / "meta.json").read_text())
    # What format version 1 wrote: no sh_degree anywhere, colours [N, 3] logits.
    meta["format_version"] = 1
    del meta["sh_degree"]
    del meta["config"]["sh_degree"]
    (path / "meta.json").write_text(json.dumps(meta))
    loaded = M3Memory.load(path)
    assert loaded.cfg.sh_degree == 0
    _assert_same(mem, loaded)


def test_version_2_checkpoint_loads_uncentred(mem, tmp_path):
    from safetensors.torch import load_file, save_file
    path = tmp_path / "m"
    mem.save(path)
    # What format version 2 wrote: no centring statistics, no row counts, no "centre" in the config.
    tensors = {k: v for k, v in load_file(str(path / "tensors.safetensors")).items()
               if not k.startswith(("bank_counts/", "bank_centre_sum/"))}
    save_file(tensors, str(path / "tensors.safetensors"), metadata={"format": checkpoint.FORMAT})
    meta = json.loads((path / "meta.json").read_text())
    meta["format_version"] = 2
    meta["tensors_sha256"] = checkpoint._sha256(path / "tensors.safetensors")
    for slot in meta["config"]["models"].values():
        del slot["centre"]
    (path / "meta.json").write_text(json.dumps(meta))
    loaded = M3Memory.load(path)
    for m, bank in loaded.banks.items():
        assert not bank.centring and not loaded.cfg.models[m].centred
        torch.testing.assert_close(bank.unit_rows, torch.nn.functional.normalize(bank.rows, dim=-1))
        assert torch.equal(bank.counts, torch.ones(len(bank)))


def test_memory_saved_with_the_vote_relevance_keys_loads(mem, tmp_path):
    path = tmp_path / "m"
    mem.save(path)
    meta = json.loads((path / "meta.json").read_text())
    # What configs wrote before the bounded relevance map; they mean nothing now and are dropped.
    meta["config"].update(relevance_stride=4, relevance_candidates=8, relevance_max_rows=64)
    del meta["config"]["relevance_max_err"]
    (path / "meta.json").write_text(json.dumps(meta))
    loaded = M3Memory.load(path)
    assert loaded.cfg.relevance_max_err == MemoryConfig().relevance_max_err
    _assert_same(mem, loaded)
    with pytest.raises(ValueError, match="unknown MemoryConfig keys"):
        MemoryConfig.from_dict({"relevance_strides": 4})


def test_state_dict_round_trip_without_files(mem):
    state = mem.state_dict()
    assert set(state["banks"]) == set(mem.banks) and state["keyframes"] == len(mem.keyframes)
    _assert_same(mem, M3Memory.from_state(state))
    # the state is a copy: editing it leaves the memory alone
    state["params"]["means"] += 1.0
    assert not torch.equal(state["params"]["means"], mem.params["means"].detach())


def test_checkpoint_does_not_import_the_memory_class():
    import subprocess
    import sys
    code = ("import sys, m3_ros.memory.checkpoint; "
            "sys.exit(1 if 'm3_ros.memory.memory' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_training_goes_on_while_a_save_writes(mem, tmp_path, monkeypatch):
    """The lock is held while the state is copied, not while files are written and synced."""
    import threading
    writing, release = threading.Event(), threading.Event()
    real = checkpoint.save_file

    def slow_disk(*a, **k):  # the real write, held until the train step below has run
        writing.set()
        assert release.wait(30), "the train step never ran while the save was writing"
        return real(*a, **k)
    monkeypatch.setattr(checkpoint, "save_file", slow_disk)
    saver = threading.Thread(target=mem.save, args=(tmp_path / "m",))
    saver.start()
    assert writing.wait(30)
    before = mem.iteration
    stepper = threading.Thread(target=mem.train_step)
    stepper.start()
    stepper.join(10)
    stepped = not stepper.is_alive() and mem.iteration == before + 1
    release.set()
    saver.join(30)
    stepper.join(30)
    assert stepped, "a train step waited for the save's file writing"
    # what was saved is the state when the save began, loadable and complete
    assert M3Memory.load(tmp_path / "m").iteration == before
