"""Progress bars: one rule decides whether a bar shows, and TQDM_DISABLE silences all of them."""

from __future__ import annotations

import os

from vlmlens.cli import main
from vlmlens.ops import sweep
from vlmlens.progress import AUTO_MIN, progress_bar


def test_the_rule(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert progress_bar(range(AUTO_MIN - 1), desc="x", progress=None).disable
    assert not progress_bar(range(AUTO_MIN), desc="x", progress=None).disable
    assert progress_bar(range(100), desc="x", progress=False).disable
    assert not progress_bar(range(2), desc="x", progress=True).disable
    assert progress_bar(desc="x", progress=None).disable  # unknown length: not shown automatically
    monkeypatch.setenv("TQDM_DISABLE", "1")
    assert progress_bar(range(2), desc="x", progress=True).disable


def test_sweep_shows_and_silences_its_bar(model, batch, capsys, monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    sweep(model, batch, [[]] * 3, chunk_size=1, progress=True)
    assert "sweep: 3 conditions" in capsys.readouterr().err
    sweep(model, batch, [[]] * 3, chunk_size=1)  # 3 forwards: below AUTO_MIN
    assert "sweep" not in capsys.readouterr().err
    monkeypatch.setenv("TQDM_DISABLE", "1")
    sweep(model, batch, [[]] * 3, chunk_size=1, progress=True)
    assert "sweep" not in capsys.readouterr().err


def test_cli_quiet_sets_the_switch(monkeypatch, capsys):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)  # restored after the test
    assert main(["-q", "zoo", "list"]) == 0
    assert os.environ["TQDM_DISABLE"] == "1"
