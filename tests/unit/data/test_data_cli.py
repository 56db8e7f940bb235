"""`vlmlens data synth` subcommand."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from vlmlens.data import load_synth
from vlmlens.data.cli import add_parser, main, run


def test_synth_command_exports(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "synth"
    rc = main(["data", "synth", "--split", "popular", "--images", "3", "--seed", "4", "--size", "48", "--out", str(out)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "SynthPOPE popular: 18 questions (9 yes / 9 no) over 3 images of 48x48 px, seed 4" in text
    lines = (out / "popular.json").read_text().splitlines()
    assert len(lines) == 18 and set(json.loads(lines[0])) == {"question_id", "image", "text", "label"}
    assert len(list((out / "images").glob("*.png"))) == 3
    ds = load_synth(out, "popular")
    assert ds.image(0).size == (48, 48) and ds.ground_truth(0) is not None


def test_synth_command_reports_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["data", "synth", "--images", "2", "--size", "8", "--out", str(tmp_path)]) == 2
    assert "image_size must be an int in [16, 1024]" in capsys.readouterr().err
    assert main(["data", "synth", "--images", "2", "--out", str(tmp_path)]) == 0
    assert main(["data", "synth", "--images", "2", "--out", str(tmp_path)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert main(["data", "synth", "--images", "2", "--out", str(tmp_path), "--overwrite"]) == 0


def test_add_parser_plugs_into_a_top_level_parser() -> None:
    parser = argparse.ArgumentParser(prog="vlmlens")
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["data", "synth", "--out", "x"])
    assert (args.split, args.images, args.seed, args.size, args.func) == ("adversarial", 500, 0, 64, run)
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "synth", "--split", "hard", "--out", "x"])
