"""Early vs late fusion: where the units behind answering sit and how concentrated they are.

Runs :func:`vlmlens.circuits.fusion.compare` (the same as ``vlmlens circuits fusion``) on
the models of ``config.py`` and writes ``results.json``, ``summary.md`` and ``report.html``.

    python circuits/fusion_comparison/run.py [--models ...] [--n-images 40] [--quick] [--out DIR]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import runpy
from pathlib import Path

from vlmlens.circuits.cli import load_arms
from vlmlens.circuits.fusion import FusionConfig, compare
from vlmlens.viz.circuits import fusion_summary_markdown, write_fusion_report
from vlmlens.vrp.analysis import to_jsonable

Config = runpy.run_path(str(Path(__file__).with_name("config.py")))["Config"]  # this search's settings


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--n-images", type=int, default=None)
    parser.add_argument("--quick", action="store_true", default=None)
    parser.add_argument("--out", default=None)
    args = {k: tuple(v) if isinstance(v, list) else v for k, v in vars(parser.parse_args(argv)).items() if v is not None}
    config = dataclasses.replace(Config(), **args)
    search = (FusionConfig.quick if config.quick else FusionConfig)(n_images=config.n_images)
    result = compare(load_arms(config.models), search)
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(to_jsonable(result), indent=1, allow_nan=False))
    summary = fusion_summary_markdown(result)
    (out / "summary.md").write_text(summary)
    write_fusion_report(out / "report.html", result)
    print(summary)
    return result


if __name__ == "__main__":
    main()
