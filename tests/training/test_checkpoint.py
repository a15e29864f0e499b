from __future__ import annotations

import torch

from lmindexer.training.checkpoint import find_checkpoint, load_optimizer_tensors, optimizer_tensors, save_checkpoint


def _stepped_optimizer() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Linear(4, 3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.01)
    for _ in range(3):
        model(torch.randn(5, 4)).pow(2).sum().backward()
        optimizer.step()
        optimizer.zero_grad()
    return model, optimizer


def test_optimizer_state_round_trips_without_pickle():
    model, optimizer = _stepped_optimizer()
    tensors, document = optimizer_tensors(optimizer)
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    load_optimizer_tensors(fresh, tensors, document)
    before, after = optimizer.state_dict(), fresh.state_dict()
    assert after["param_groups"][0]["lr"] == 0.01
    for index, state in before["state"].items():
        for key, value in state.items():
            torch.testing.assert_close(after["state"][index][key], value)


def test_a_checkpoint_replaces_the_previous_one_and_reads_back(tmp_path):
    model, optimizer = _stepped_optimizer()
    target = tmp_path / "ckpt"
    codes = torch.tensor([[1, 2], [3, -1]])
    save_checkpoint(
        target, progress={"stage": 1, "step": 5}, model=model.state_dict(), optimizer=None, arrays={"codes": codes}
    )
    save_checkpoint(
        target,
        progress={"stage": 2, "step": 0},
        model=model.state_dict(),
        optimizer=optimizer,
        arrays={"codes": codes + 1},
    )
    found = find_checkpoint(target)
    assert found is not None and found.progress["stage"] == 2
    torch.testing.assert_close(found.arrays["codes"], codes + 1)
    torch.testing.assert_close(found.model["weight"], model.weight.detach())
    fresh = torch.optim.AdamW(model.parameters(), lr=0.5)
    found.restore_optimizer(fresh)
    assert fresh.state_dict()["param_groups"][0]["lr"] == 0.01
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_no_checkpoint_is_none(tmp_path):
    assert find_checkpoint(tmp_path / "missing") is None
    assert find_checkpoint(None) is None
