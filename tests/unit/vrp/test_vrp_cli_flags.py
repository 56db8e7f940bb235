"""`vlmlens reproduce` on a real checkpoint: dtype/device flags, and suffix and answer length chosen for it."""

from __future__ import annotations

import torch

from vlmlens.cli import build_parser, is_toy, load_model
from vlmlens.vrp.cli import _config


def _args(*argv):
    return build_parser().parse_args(["reproduce", *argv])


def test_toys_keep_the_toy_settings_and_real_checkpoints_get_the_pope_ones():
    toy = _config(_args("--models", "toy-llava", "tiny-qwen2_vl"))
    assert not toy.suffix and toy.consistency.max_new_tokens == 3
    real = _config(_args("--models", "llava-hf/llava-1.5-7b-hf", "--dtype", "bfloat16"))
    assert real.suffix and real.consistency.max_new_tokens == 10
    chosen = _config(_args("--models", "/some/checkpoint", "--no-suffix", "--max-new-tokens", "6"))
    assert not chosen.suffix and chosen.consistency.max_new_tokens == 6
    assert is_toy("toy-paligemma") and is_toy("tiny-llava") and not is_toy("google/paligemma-3b-mix-224")


def test_model_flags_reach_the_loader():
    args = _args("--models", "tiny-llava", "--dtype", "bf16", "--device", "cpu")
    assert (args.dtype, args.device, args.device_map) == ("bf16", "cpu", None)
    model = load_model("tiny-llava", dtype=args.dtype, device=args.device)
    assert next(model.hf_model.parameters()).dtype == torch.bfloat16


def test_config_file_sets_any_setting_and_explicit_flags_win(tmp_path):
    import json

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"seed": 4, "batch_size": 2, "masking": {"random_draws": 3, "sensitivity": [0.3]},
                                "consistency": {"k": 2, "ks": [2]}}))
    config = _config(_args("--models", "toy-llava", "--config", str(path), "--batch-size", "5"))
    assert (config.seed, config.batch_size) == (4, 5)  # the flag overrides the file
    assert config.masking.random_draws == 3 and config.masking.sensitivity == (0.3,)
    assert config.masking.fraction == 0.3 and config.consistency.ks == (2,)  # unnamed keys keep their defaults
    assert config.consistency.max_new_tokens == 3  # the toy default still fills what the file leaves out


def test_config_file_reuses_a_previous_runs_results_json(tmp_path):
    import json

    from vlmlens.vrp.config import VRPConfig

    before = VRPConfig.from_dict({"seed": 7, "suffix": True, "ablation": {"k": 3, "ks": [3]}})
    results = {"config": {"n_images": 5, "n_questions": 30, "split": "random", "dataset": "SynthPOPE",
                          **before.to_dict()}, "models": {}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    assert _config(_args("--models", "toy-llava", "--config", str(tmp_path / "results.json"))) == before


def test_config_file_with_an_unknown_setting_names_it_and_the_valid_ones(tmp_path):
    import pytest

    from vlmlens.errors import DataError

    (tmp_path / "bad.json").write_text('{"masking": {"draws": 3}}')
    with pytest.raises(DataError, match=r"VRPConfig.masking has no setting 'draws'; its settings are fraction, "):
        _config(_args("--models", "toy-llava", "--config", str(tmp_path / "bad.json")))
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(DataError, match="expected a JSON object of settings, got list"):
        _config(_args("--models", "toy-llava", "--config", str(tmp_path / "list.json")))


def test_flags_beat_the_file_and_reach_the_run(tmp_path):
    import argparse
    import json

    from vlmlens.data import synth_pope
    from vlmlens.vrp.cli import _dataset

    path = tmp_path / "settings.json"
    path.write_text(json.dumps({"seed": 4, "n_resamples": 1000, "consistency": {"max_new_tokens": 7},
                                "identify": {"max_new_tokens": 5}}))
    config = _config(_args("--models", "toy-llava", "--config", str(path), "--quick", "--seed", "9", "--identify",
                           "--max-new-tokens", "2"))
    assert config.n_resamples == 200  # --quick is a flag: it beats the file
    assert config.seed == 9 and config.consistency.max_new_tokens == 2
    assert config.identify.enabled and config.identify.max_new_tokens == 5  # --identify merges into the file's
    assert _config(_args("--models", "toy-llava", "--config", str(path), "--quick", "--resamples", "30")).n_resamples == 30
    args = argparse.Namespace(pope=None, split="adversarial")
    assert _dataset(args, 2, config.seed).items == synth_pope("adversarial", 2, seed=9).items  # the seed reaches the data


def test_pope_n_keeps_every_question_of_the_first_n_images(tmp_path):
    import argparse
    import json

    from PIL import Image

    from vlmlens.vrp.cli import _dataset

    lines = []
    for i in range(3):  # 3 images, 2 questions each
        Image.new("RGB", (8, 8)).save(tmp_path / f"im{i}.jpg")
        lines += [json.dumps({"question_id": 2 * i + j, "image": f"im{i}.jpg", "text": "Is there a cat in the image?",
                              "label": "yes"}) for j in range(2)]
    (tmp_path / "coco_pope_random.json").write_text("\n".join(lines))
    args = argparse.Namespace(pope=tmp_path / "coco_pope_random.json", images=tmp_path, split="random")
    assert [item.image for item in _dataset(args, 2, 0).items] == ["im0.jpg", "im0.jpg", "im1.jpg", "im1.jpg"]


def test_config_values_of_the_wrong_kind_are_refused():
    import pytest

    from vlmlens.errors import DataError
    from vlmlens.vrp.config import VRPConfig

    for bad, match in [({"suffix": "false"}, "VRPConfig.suffix must be true or false"),
                       ({"ablation": {"k": 5.0}}, "VRPConfig.ablation.k must be a whole number"),
                       ({"masking": {"sensitivity": 0.3}}, "must be a list"),
                       ({"identify": None}, "VRPConfig.identify must be a JSON object")]:
        with pytest.raises(DataError, match=match):
            VRPConfig.from_dict(bad)
    assert VRPConfig.from_dict({"probe": {"C": 1}, "mlp_probe": {"C": 1}}).probe.C == 1  # an int is a number
