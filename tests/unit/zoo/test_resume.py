"""Training snapshots: written whole or not at all, read back as written, refused for another run."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from vlmlens.zoo import resume
from vlmlens.zoo.errors import ZooError
from vlmlens.zoo.pretrain import PretrainResult
from vlmlens.zoo.resume import RunState, load_state, save_state, state_path
from vlmlens.zoo.stages import StageResult, StageState
from vlmlens.zoo.train import versions

KEY = {"format": 1, "family": "llava", "seed": 0, "recipe": {"stages": ({"name": "a", "steps": 3},)}, "threads": 1}


def run_state(step: int = 2) -> RunState:
    layer = torch.nn.Linear(3, 2)
    opt = torch.optim.AdamW(layer.parameters(), lr=1e-3)
    layer(torch.ones(1, 3)).sum().backward()
    opt.step()
    current = StageState(
        losses=(0.5,) * step,
        seconds=1.5,
        optimizer=opt.state_dict(),
        scheduler={"last_epoch": step},
        sampler={"rng": {"state": {"state": 2**100 + 7}}, "orders": {"qa": torch.arange(4)}, "pos": {"qa": 1}},
    )
    return RunState(
        key=KEY,
        stage=1,
        done=(StageResult(name="lm-text", steps=3, seconds=2.0, final_loss=0.25, losses=(1.0, 0.5, 0.25)),),
        current=current,
        model=layer.state_dict(),
        pretrain=PretrainResult(steps=5, final_loss=0.3, presence_accuracy=0.9, layout_accuracy=0.8),
        torch_rng=torch.get_rng_state(),
        seconds=4.0,
    )


def test_snapshot_reads_back_as_written(tmp_path):
    path = state_path(tmp_path / "run")
    assert load_state(path, KEY) is None
    state = run_state()
    save_state(path, state)
    back = load_state(path, KEY)
    assert (back.stage, back.done, back.pretrain, back.seconds) == (state.stage, state.done, state.pretrain, 4.0)
    assert back.current.losses == state.current.losses and back.current.sampler["rng"] == state.current.sampler["rng"]
    assert torch.equal(back.current.sampler["orders"]["qa"], torch.arange(4))
    assert torch.equal(back.current.optimizer["state"][0]["exp_avg"], state.current.optimizer["state"][0]["exp_avg"])
    assert all(torch.equal(back.model[k], state.model[k]) for k in state.model)
    assert torch.equal(back.torch_rng, state.torch_rng)
    assert not path.with_name(path.name + ".tmp").exists()


def test_snapshot_of_another_run_names_what_differs(tmp_path):
    path = state_path(tmp_path)
    save_state(path, run_state())
    other = {**KEY, "seed": 1, "threads": 2}
    with pytest.raises(ZooError, match=r"another training run \(it differs in: seed, threads\).*--restart"):
        load_state(path, other)
    with pytest.raises(ZooError, match=r"differs in: versions"):
        load_state(path, {**KEY, "versions": {"torch": "2.13.0"}})


def test_snapshot_from_other_cpu_kernels_is_refused(tmp_path):
    # AVX2 and AVX512 kernels round differently: a run resumed on the other would be neither.
    here = versions()
    assert here["cpu"] == torch.backends.cpu.get_cpu_capability()
    path = state_path(tmp_path)
    save_state(path, dataclasses.replace(run_state(), key={**KEY, "versions": here}))
    assert load_state(path, {**KEY, "versions": here}) is not None
    other = "AVX512" if here["cpu"] != "AVX512" else "AVX2"
    with pytest.raises(ZooError, match=r"differs in: versions"):
        load_state(path, {**KEY, "versions": {**here, "cpu": other}})


def test_unreadable_or_incomplete_snapshot_is_a_clear_error(tmp_path):
    path = state_path(tmp_path)
    path.write_bytes(b"not a snapshot")
    with pytest.raises(ZooError, match=r"Cannot read the training snapshot .* delete it \(CLI: --restart"):
        load_state(path, KEY)
    torch.save({"key": KEY, "stage": 1}, path)
    with pytest.raises(ZooError, match=r"snapshot .* is incomplete \(KeyError\('current'\)\)"):
        load_state(path, KEY)


def test_a_kill_while_writing_keeps_the_previous_snapshot(tmp_path, monkeypatch):
    path = state_path(tmp_path)
    save_state(path, run_state(step=2))

    def dies_halfway(payload, file):
        file.write(b"\x80\x02partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(resume.torch, "save", dies_halfway)
    with pytest.raises(KeyboardInterrupt):
        save_state(path, run_state(step=3))
    assert load_state(path, KEY).current.step == 2
