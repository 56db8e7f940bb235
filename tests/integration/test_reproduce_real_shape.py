"""`vlmlens reproduce` on real checkpoints' architectures: the command a GPU user runs, end to end.

Each family's published architecture (``vlmlens.real_shapes``: LLaVA-1.5-7B, PaliGemma-3B,
Qwen2-VL-2B widths, heads, vocabularies, image sizes; one text block) is saved with random
weights to a folder and run through the real command line, as for a downloaded checkpoint:
``--pope FILE --images DIR --dtype bfloat16 --device cpu --batch-size N``, with a POPE
question file and JPEG images in POPE's layout. The dtype is bfloat16 where the CPU runs it
natively (oneDNN bf16: AVX512-BF16 or AMX) and float32 elsewhere: on an AVX2-only CPU torch's
bf16 matrix products take a slow path (3.4 s for one 512 x 4096 by 4096 x 4096 product), and the
LLaVA case ran for over 20 minutes without finishing. ``--config`` shrinks the sweeps so that it
fits a CPU; every phase still runs (per-sample pass, probes, masking, ablation,
destruction, the identification readout, the report). Slow: about a minute per family on 2 cores where bf16 is native, 3 on an AVX2 CPU.
"""

from __future__ import annotations

import json

import pytest
import torch

from vlmlens.cli import main
from vlmlens.real_shapes import save_real_shape
from vlmlens.testing import tiny_images

pytestmark = pytest.mark.slow

OBJECTS = ("dog", "cat")  # one yes and one no per image (POPE asks 3 + 3): a CPU-sized file
N_IMAGES = 4  # the probes' split is grouped by image: two on each side, so each side's CI resamples images
N = N_IMAGES * len(OBJECTS)
SMALL = {  # every phase runs, each at its smallest
    "consistency": {"k": 2, "ks": [2]},
    "masking": {"sensitivity": [0.3], "random_draws": 2, "sweep_draws": 1},
    "ablation": {"k": 1, "ks": [1], "random_draws": 1},
    "destruction": {"n_dims": 1, "fractions": [0.5], "random_draws": 1},
    "probe": {"test_size": 0.5, "cv_folds": 2, "cv_repeats": 1, "n_permutations": 5},
    "mlp_probe": {"test_size": 0.5, "cv_folds": 2, "cv_repeats": 1, "n_permutations": 5, "mlp_epochs": 2,
                  "mlp_hidden": 8},
    "identify": {"max_new_tokens": 4},
}
DTYPE = "bfloat16" if torch.ops.mkldnn._is_mkldnn_bf16_supported() else "float32"
SIZES = {"llava": 336, "paligemma": 224, "qwen2_vl": 112}  # Qwen2-VL keeps the size: 112 px = 16 tokens


def _pope(folder, size):
    """A POPE question file (JSON Lines) and its COCO-named JPEGs."""
    images = folder / "val2014"
    images.mkdir()
    lines = []
    for i in range(N_IMAGES):
        name = f"COCO_val2014_{i:012d}.jpg"
        tiny_images(1, size=size, seed=i)[0].save(images / name)
        for j, obj in enumerate(OBJECTS):
            lines.append(json.dumps({"question_id": len(lines) + 1, "image": name,
                                     "text": f"Is there a {obj} in the image?", "label": "yes" if j % 2 else "no"}))
    questions = folder / "coco_pope_adversarial.json"
    questions.write_text("\n".join(lines) + "\n")
    return questions, images


@pytest.mark.parametrize("family", ["llava", "paligemma", "qwen2_vl"])
def test_reproduce_runs_a_real_architecture_checkpoint_folder(family, tmp_path, capsys):
    checkpoint = save_real_shape(family, tmp_path / "checkpoint", text_layers=1, vision_layers=1)
    questions, images = _pope(tmp_path, SIZES[family])
    (tmp_path / "small.json").write_text(json.dumps(SMALL))
    out = tmp_path / "run"
    rc = main(["-q", "reproduce", "--models", str(checkpoint), "--pope", str(questions), "--images", str(images),
               "--dtype", DTYPE, "--device", "cpu", "--batch-size", str(N), "--n", str(N_IMAGES),
               "--config", str(tmp_path / "small.json"), "--identify", "--resamples", "20", "--out", str(out)])
    assert rc == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    config = results["config"]
    assert config["suffix"] and config["consistency"]["max_new_tokens"] == 10  # a real checkpoint's defaults
    assert config["dataset"] == str(questions) and config["n_questions"] == N
    r = results["models"][str(checkpoint)]
    assert r["family"] == family and r["n"] == N
    assert r["d_model"] == {"llava": 4096, "paligemma": 2048, "qwen2_vl": 1536}[family]
    # Random weights answer one way; the labels are half yes, so both outcomes occur and every
    # phase is defined: probes, ablation, destruction, identification.
    assert 0 < r["pope"]["accuracy"] < 1
    assert isinstance(r["probes"]["logistic"], dict) and isinstance(r["probes"]["mlp"], dict)
    assert r["masking"]["random_draws"] == 2
    assert {"mlp_out", "mlp_post"} <= set(r["ablation"]) and r["destruction"]["width"] == r["d_model"]
    assert r["identification"]["n"] == N
    frame = (out / "per_sample.csv").read_text()
    assert frame.count("\n") == N + 1
    assert "mask_random_30_d1_correct" in frame.splitlines()[0]
    assert (out / "summary.md").read_text().startswith("# VRP summary")
    assert (out / "report.html").stat().st_size > 10_000
