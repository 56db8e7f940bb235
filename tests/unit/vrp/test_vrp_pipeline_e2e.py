"""``vlmlens.vrp.run`` end to end on a tiny random model: every measurement, summary, figures, report."""

import json

import numpy as np
import pytest
import torch

from vlmlens import vrp
from vlmlens.data import synth_pope
from vlmlens.testing import tiny_vlm
from vlmlens.vrp.pipeline import AnswerTokens

CONFIG = vrp.VRPConfig(
    batch_size=4, n_resamples=50,
    consistency=vrp.ConsistencyConfig(k=3, ks=(2, 3), max_new_tokens=2),
    masking=vrp.MaskingConfig(fraction=0.3, sensitivity=(0.2, 0.3)),
    ablation=vrp.AblationConfig(k=2, ks=(1, 2), random_draws=1),
    destruction=vrp.DestructionConfig(n_dims=2, fractions=(0.5,)),
    identify=vrp.IdentifyConfig(enabled=True, max_new_tokens=3),
    probe=vrp.ProbeConfig(test_size=0.5, cv_folds=2, cv_repeats=1, n_permutations=5),
    mlp_probe=vrp.ProbeConfig(kind="mlp", test_size=0.5, cv_folds=2, cv_repeats=1, n_permutations=5),
)
N_IMAGES = 4  # grouped by image: two images on each side of the split, two CV folds inside the training part


@pytest.fixture(scope="module")
def result(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny matrices: one thread is several times faster on shared cores
    try:
        model = tiny_vlm("qwen2_vl")
        dataset = synth_pope("adversarial", N_IMAGES, seed=0)
        return model, dataset, vrp.run(model, dataset, CONFIG, out=tmp_path_factory.mktemp("vrp"), name="tiny")
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_every_measurement_is_reported(result) -> None:
    _, dataset, res = result
    r = res.results
    assert r["n"] == len(dataset) == 6 * N_IMAGES and r["pope"]["n"] == 6 * N_IMAGES
    assert set(r["attention"]["rpb"]) == {"C_k", "H_s", "H_s_norm", "object_mass"}
    assert r["attention"]["layers"] == "family"  # Qwen2-VL: M over all layers, as the paper
    assert {(row["measure"], row["setting"]) for row in r["attention"]["sweep"]} >= {("C_k", "all"), ("C_k", "p80_eps1")}
    assert set(r["attention"]["verdicts"]) == {"C_k", "H_s_norm"}
    frame = res.to_frame()
    assert (frame["C_k@all"] == frame["C_k"]).all() and (frame["H_s_norm@all"] == frame["H_s_norm"]).all()
    assert (frame["C_k@p90_eps1.5"] == frame["C_k"]).all()  # the reported setting, recomputed
    assert len(r["attention"]["H_s_by_layer"]) == 2 and len(r["attention"]["dH_s_by_layer"]) == 1
    assert len(r["margins"]["truth"]) == 2 and 0 <= r["margins"]["peak_visual_layer"] < 2
    assert set(r["probes"]) == {"logistic", "mlp", "baselines"}
    for kind in ("logistic", "mlp"):
        p = r["probes"][kind]
        assert isinstance(p, dict), p  # defined: both outcomes on both sides of the grouped split
        assert p["n_groups"] == N_IMAGES and p["selected"]["n_permutations"] == 5
        assert p["best_layer"] == int(np.argmax([row["cv_auroc"] for row in p["by_layer"]]))
    assert set(r["probes"]["baselines"]) == set(vrp.analysis.BASELINES)
    assert set(r["calibration"]) == {"token confidence", "self-consistency", "logistic probe", "mlp probe"}
    assert [row["k"] for row in r["consistency"]["by_k"]] == [2, 3]
    assert [row["fraction"] for row in r["masking"]["by_fraction"]] == [0.2, 0.3]
    assert set(r["ablation"]) == {"layer", "mlp_out", "mlp_post"}
    assert r["ablation"]["mlp_out"]["top_vs_random"]["n_clusters"] == N_IMAGES
    assert len(r["destruction"]["ranked_drop_ci"]) == len(r["destruction"]["counts"])
    assert r["masking"]["top_drop"]["n"] == 6 * N_IMAGES
    assert set(r["multiplicity"]) == {"correlations", "probes", "masking", "ablation", "destruction", "identification"}
    for tests in r["multiplicity"].values():
        assert all(t["p"] <= t["p_bh"] <= t["p_holm"] <= 1 for t in tests)
    assert r["ablation"]["mlp_out"]["k"] == 2 and len(r["ablation"]["mlp_out"]["dims"]) == 2
    ident = r["identification"]
    assert ident["n"] == 6 * N_IMAGES and ident["layer"] == r["ablation"]["layer"]
    assert [row["k"] for row in ident["mlp_out"]["by_k"]] == [2]  # the reported k only
    assert ident["mlp_out"]["dims"] == r["ablation"]["mlp_out"]["dims"]  # the same neurons as the yes/no readout
    # A family of its own, of image-level tests: the ablation family is what it is without the option.
    assert [t["test"] for t in r["multiplicity"]["identification"]] == [
        "mlp_out top-2 vs clean", "mlp_out top-2 vs random", "mlp_post top-2 vs clean", "mlp_post top-2 vs random"]
    assert r["multiplicity"]["identification"][0]["p"] == ident["mlp_out"]["top_drop"]["p_value"]
    assert not any("identification" in t["test"] for t in r["multiplicity"]["ablation"])
    assert "object-identification accuracy drop" in res.summary()
    assert r["destruction"]["counts"] == [2, 32]  # 2 dims, then 50% of d_model 64
    assert len(r["examples"]) == CONFIG.n_examples
    json.dumps(r, allow_nan=False)  # every number is plain JSON


@pytest.mark.slow
def test_logit_lens_at_the_last_layer_equals_the_model_logits(result) -> None:
    model, dataset, res = result
    items = dataset.items[:4]
    batch = model.prepare([dataset.image(i) for i in items], [i.text for i in items], suffix=CONFIG.suffix)
    logits = model.forward(batch)[torch.arange(4), torch.tensor(batch.layout.last_prompt)]
    tokens = AnswerTokens.of(model)
    expected = logits[:, list(tokens.yes)].max(-1).values - logits[:, list(tokens.no)].max(-1).values
    stored = [json.loads(v)[-1] for v in res.samples["yes_no_margin"][:4]]
    np.testing.assert_allclose(stored, expected.numpy(), atol=1e-4)


@pytest.mark.slow
def test_summary_figures_report_and_table(result) -> None:
    from vlmlens.viz.report import report_html

    _, _, res = result
    summary = res.summary()
    assert summary.startswith("# VRP summary")
    for row in ("R_pb(C_k, correct)", "attended patch masking", "self-consistency K=3", "MLP-output dims ablation",
                "dims destroyed", "peak visual layer", "best probe layer", "Sensitivity"):
        assert row in summary
    figures = res.figures()
    assert {"rpb", "probe_auroc", "margins", "masking", "ablation", "destruction", "attention_examples"} <= set(figures)
    assert any(trace.type == "image" for trace in figures["attention_examples"].data)  # maps over the images
    page = report_html({"models": {res.name: res.results}}, summary=summary)
    assert page.count("<table>") == 3 and "<script src" not in page  # headline, sensitivity, multiplicity
    frame = res.to_frame()
    assert len(frame) == 6 * N_IMAGES and {"S_SC", "confidence", "ablate_mlp_out_top_k2", "destroy_ranked_n32"} <= set(frame)


@pytest.mark.slow
def test_planned_ablations_equal_a_hand_written_hook(result) -> None:
    from vlmlens.ops import sweep
    from vlmlens.vrp.ablation import plan_interventions

    model, dataset, res = result
    plan = json.loads((res.folder / "plan.json").read_text())
    names, conditions = plan_interventions(plan, CONFIG)
    items = dataset.items[:2]
    batch = model.prepare([dataset.image(i) for i in items], [i.text for i in items], suffix=CONFIG.suffix)
    chosen = [names.index("ablate_mlp_out_top_k2"), names.index("destroy_ranked_n32")]
    swept = sweep(model, batch, [conditions[i] for i in chosen])
    clean = model.forward(batch)
    for logits, i in zip(swept, chosen):
        condition = plan["conditions"][i]
        dims = list(condition["dims"])

        def zero(module, args, output, dims=dims):
            output = output.clone()
            output[..., dims] = 0.0
            return output

        handle = model.module(model.hook_path(condition["site"])).register_forward_hook(zero)
        try:
            expected = model.forward(batch)
        finally:
            handle.remove()
        torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)
        assert (logits - clean).abs().max() > 1e-4  # the ablation did change the model


@pytest.mark.slow
def test_identification_answers_equal_hand_ablated_generation(result) -> None:
    """The readout's answers are HF's greedy generate with the planned dims zeroed by a plain torch hook."""
    from vlmlens.vrp.identify import (
        IDENTIFY_QUESTION,
        correct_column,
        named,
        text_column,
    )

    model, dataset, res = result
    plan = json.loads((res.folder / "plan.json").read_text())
    table = res.to_frame()
    answers = __import__("pandas").read_csv(res.folder / "identify.csv", keep_default_na=False)
    item = dataset.items[0]
    batch = model.prepare([dataset.image(item)], [IDENTIFY_QUESTION])
    mlp = model.hf_model.get_submodule(f"model.language_model.layers.{plan['ablation_layer']}.mlp")
    prompt = batch.inputs["input_ids"].shape[1]
    for name in ("clean", "ablate_mlp_out_top_k2", "ablate_mlp_out_random_k2_d0"):
        dims = next((c["dims"] for c in plan["conditions"] if c["name"] == name), [])

        def zero(module, args, out, dims=dims):
            out = out.clone()
            out[..., dims] = 0
            return out

        handle = mlp.register_forward_hook(zero)
        try:
            with torch.no_grad():
                ids = model.hf_model.generate(**batch.inputs, max_new_tokens=CONFIG.identify.max_new_tokens,
                                              do_sample=False, pad_token_id=model.tokenizer.pad_token_id)
        finally:
            handle.remove()
        text = model.tokenizer.decode(ids[0, prompt:], skip_special_tokens=True).strip()
        rows = answers[answers["question_id"].isin([i.question_id for i in dataset.items if i.image == item.image])]
        assert (rows[text_column(name)] == text).all(), (name, text, rows[text_column(name)].tolist())
        for _, row in rows.iterrows():
            question = next(i for i in dataset.items if i.question_id == row["question_id"])
            vocabulary = sorted({i.object_name for i in dataset.items})
            want = int(named(text, question.object_name, vocabulary) == (question.label == "yes"))
            assert table.loc[table["question_id"] == question.question_id, correct_column(name)].item() == want


@pytest.mark.slow
def test_resume_refuses_other_settings_and_finishes_a_killed_identification(result, tmp_path) -> None:
    import dataclasses
    import shutil

    from vlmlens.errors import DataError

    model, dataset, res = result
    folder = tmp_path / "store"
    shutil.copytree(res.folder, folder)
    more_draws = dataclasses.replace(CONFIG, masking=dataclasses.replace(CONFIG.masking, random_draws=2))
    with pytest.raises(DataError, match=r"other settings \(masking differ"):
        vrp.run(model, dataset, more_draws, out=folder, resume=True, name="tiny")
    table = folder / "identify.csv"
    lines = table.read_text().splitlines(keepends=True)
    table.write_text("".join(lines[:7]))  # killed after the first image's six questions
    resumed = vrp.run(model, dataset, CONFIG, out=folder, resume=True, name="tiny")
    assert table.read_text().splitlines() == [line.rstrip("\n") for line in lines]
    assert json.dumps(resumed.results["identification"], sort_keys=True) == json.dumps(
        res.results["identification"], sort_keys=True)
