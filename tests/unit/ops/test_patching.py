"""Activation patching: exact identities, sweep values equal one-by-one runs, shapes, labels, errors."""

import plotly.graph_objects as go
import pytest
import torch

from vlmlens.errors import InputError, SiteNotFoundError
from vlmlens.ops import (
    Patch,
    PatchingResult,
    logit_diff,
    patch_heads,
    patch_image_patches,
    patch_neurons,
    patch_residual,
    run_with_cache,
    run_with_interventions,
    sweep,
)
from vlmlens.testing import tiny_images

ATOL = 1e-5
QUESTIONS = ["Is there a cat in the image?", "Is there a dog in the image?"]


@pytest.fixture(scope="module")
def pair(model):
    """Clean and corrupt batches: the same questions over different images (one token layout)."""
    return model.prepare(tiny_images(2, seed=1), QUESTIONS), model.prepare(tiny_images(2, seed=5), QUESTIONS)


@pytest.fixture(scope="module")
def metric(model):
    ids = model.tokenizer.convert_tokens_to_ids
    return logit_diff(ids("yes"), [ids("no"), ids("No")])


def measure(model, batch, metric, interventions):
    return float(metric(run_with_interventions(model, batch, interventions), batch))


def test_logit_diff_by_hand(model, pair):
    clean, _ = pair
    ids = model.tokenizer.convert_tokens_to_ids
    logits = model.forward(clean)
    last = clean.layout.last_prompt
    rows = torch.stack([logits[b, p] for b, p in enumerate(last)])
    want = (rows[:, ids("yes")] - torch.logsumexp(rows[:, [ids("no"), ids("No")]], -1)).mean()
    assert abs(float(logit_diff(ids("yes"), [ids("no"), ids("No")])(logits, clean)) - float(want)) <= 1e-6


def test_clean_into_itself_gives_clean_metric(model, pair, metric):
    clean, _ = pair
    result = patch_residual(model, clean, clean, metric, chunk_size=32)
    assert result.clean_metric == pytest.approx(result.corrupt_metric, abs=ATOL)
    assert (result.values - result.clean_metric).abs().max() <= ATOL
    heads = patch_heads(model, clean, clean, metric)
    assert (heads.values - heads.clean_metric).abs().max() <= ATOL
    patches = patch_image_patches(model, clean, clean, metric)
    assert (patches.values - patches.clean_metric).abs().max() <= ATOL


def test_patching_all_positions_at_layer0_restores_clean(model, pair, metric):
    clean, corrupt = pair
    site = "text.blocks.0.hook_resid_pre"
    clean_logits, cache = run_with_cache(model, clean, sites=[site])
    clean_metric = float(metric(clean_logits, clean))
    corrupt_metric = measure(model, corrupt, metric, [])
    assert abs(clean_metric - corrupt_metric) > 1e-4  # the corruption matters, so the check below means something
    patched = measure(model, corrupt, metric, [Patch(site=site, source=cache[site])])
    assert patched == pytest.approx(clean_metric, abs=ATOL)
    # The same through a sweep, next to an unpatched condition.
    stacked = sweep(model, corrupt, [[], [Patch(site=site, source=cache[site])]])
    assert float(metric(stacked[0], corrupt)) == pytest.approx(corrupt_metric, abs=ATOL)
    assert float(metric(stacked[1], corrupt)) == pytest.approx(clean_metric, abs=ATOL)


def test_residual_values_equal_one_by_one(model, pair, metric):
    clean, corrupt = pair
    layout = clean.layout
    positions = [layout.patch_position(0, 0, 0), layout.patch_position(0, 1, 1), layout.last_prompt[0] - 1,
                 layout.last_prompt[0]]
    result = patch_residual(model, clean, corrupt, metric, positions=positions, chunk_size=3)
    assert result.axes == ("layer", "position")
    assert result.values.shape == (model.n_layers, len(positions))
    assert result.labels[0] == tuple(range(model.n_layers))
    assert result.labels[1][0] == f"{positions[0]}:img(0,0)" and result.labels[1][1] == f"{positions[1]}:img(1,1)"
    assert [str(s) for s in result.sites] == [f"text.blocks.{i}.hook_resid_pre" for i in range(model.n_layers)]
    _, cache = run_with_cache(model, clean, sites=result.sites)
    for (i, layer), (j, p) in [((0, 0), (0, positions[0])), ((1, 1), (3, positions[3])), ((1, 1), (1, positions[1]))]:
        site = result.sites[i]
        want = measure(model, corrupt, metric, [Patch(site=site, source=cache[site], positions=[p])])
        assert float(result.values[i, j]) == pytest.approx(want, abs=ATOL)
    assert result.corrupt_metric == pytest.approx(measure(model, corrupt, metric, []), abs=ATOL)
    # The last position of the last layer feeds the answer logits directly, so patching it must move the metric.
    assert float(result.values[-1, -1]) != pytest.approx(result.corrupt_metric, abs=1e-7)


def test_residual_default_positions_and_layers(model, pair, metric):
    clean, corrupt = pair
    result = patch_residual(model, clean, corrupt, metric, layers=[-1], chunk_size=64)
    assert result.values.shape == (1, clean.layout.seq_len)  # no padding: every position
    assert result.labels[0] == (model.n_layers - 1,)
    image = patch_residual(model, clean, corrupt, metric, layers=[0], positions="image", chunk_size=64)
    rows, cols = clean.layout.grid(0)
    assert image.values.shape == (1, rows * cols)


def test_heads_values_equal_one_by_one(model, pair, metric):
    clean, corrupt = pair
    result = patch_heads(model, clean, corrupt, metric, chunk_size=5)
    assert result.axes == ("layer", "head") and result.values.shape == (model.n_layers, model.n_heads)
    _, cache = run_with_cache(model, clean, sites=result.sites)
    for layer, head in [(0, 1), (1, model.n_heads - 1)]:
        site = result.sites[layer]
        want = measure(model, corrupt, metric, [Patch(site=site, source=cache[site], heads=(head,))])
        assert float(result.values[layer, head]) == pytest.approx(want, abs=ATOL)
    kv = patch_heads(model, clean, corrupt, metric, point="v", layers=[1], positions="last")
    assert kv.values.shape == (1, model.n_kv_heads)
    _, cache = run_with_cache(model, clean, sites=kv.sites)
    want = measure(model, corrupt, metric, [Patch(site=kv.sites[0], source=cache[kv.sites[0]], heads=(0,),
                                                  positions="last")])
    assert float(kv.values[0, 0]) == pytest.approx(want, abs=ATOL)
    for point in ("pattern", "result"):  # head axis 1 for patterns; result needs the per-head hooks switched on
        one = patch_heads(model, clean, corrupt, metric, point=point, layers=[1])
        _, cache = run_with_cache(model, clean, sites=one.sites)
        want = measure(model, corrupt, metric, [Patch(site=one.sites[0], source=cache[one.sites[0]], heads=(2,))])
        assert float(one.values[0, 2]) == pytest.approx(want, abs=ATOL), point


def test_neurons_values_equal_one_by_one(model, pair, metric):
    clean, corrupt = pair
    result = patch_neurons(model, clean, corrupt, metric, layer=1, neurons=[0, 5, 77], chunk_size=2)
    assert result.axes == ("neuron",) and result.labels == ((0, 5, 77),) and result.values.shape == (3,)
    site = result.sites[0]
    assert str(site) == "text.blocks.1.mlp.hook_post"
    _, cache = run_with_cache(model, clean, sites=[site])
    want = measure(model, corrupt, metric, [Patch(site=site, source=cache[site], dims=(77,), positions="last")])
    assert float(result.values[2]) == pytest.approx(want, abs=ATOL)


def test_image_patches_values_equal_one_by_one(model, pair, metric):
    clean, corrupt = pair
    rows, cols = clean.layout.grid(0)
    result = patch_image_patches(model, clean, corrupt, metric, chunk_size=3)
    assert result.axes == ("row", "col") and result.values.shape == (rows, cols)
    assert result.labels == (tuple(range(rows)), tuple(range(cols)))
    _, cache = run_with_cache(model, clean, sites=["text.hook_embed"])
    r, c = rows - 1, 0
    p = clean.layout.patch_position(0, r, c)
    want = measure(model, corrupt, metric, [Patch(site="text.hook_embed", source=cache["text.hook_embed"],
                                                  positions=[p])])
    assert float(result.values[r, c]) == pytest.approx(want, abs=ATOL)
    by_layer = patch_image_patches(model, clean, corrupt, metric, layers=[0, 1], chunk_size=16)
    assert by_layer.axes == ("layer", "row", "col") and by_layer.values.shape == (2, rows, cols)
    _, cache = run_with_cache(model, clean, sites=["text.blocks.1.hook_resid_pre"])
    want = measure(model, corrupt, metric, [Patch(site="text.blocks.1.hook_resid_pre",
                                                  source=cache["text.blocks.1.hook_resid_pre"], positions=[p])])
    assert float(by_layer.values[1, r, c]) == pytest.approx(want, abs=ATOL)


def test_result_frame_normalized_and_heatmaps(model, pair, metric):
    clean, corrupt = pair
    result = patch_residual(model, clean, corrupt, metric, positions="last")
    norm = result.normalized()
    expected = (result.values - result.corrupt_metric) / (result.clean_metric - result.corrupt_metric)
    assert torch.allclose(norm, expected)
    frame = result.to_frame()
    assert list(frame.columns) == ["layer", "position", "value", "normalized"]
    assert len(frame) == result.values.numel()
    assert frame["value"].tolist() == pytest.approx(result.values.flatten().tolist())
    assert isinstance(result.heatmap(), go.Figure)
    assert isinstance(result.heatmap(normalized=False, title="raw"), go.Figure)
    neurons = patch_neurons(model, clean, corrupt, metric, layer=0, neurons=range(3))
    assert isinstance(neurons.heatmap(), go.Figure)
    grids = patch_image_patches(model, clean, corrupt, metric, layers=[0, 1], chunk_size=16)
    fig = grids.heatmap()
    assert isinstance(fig, go.Figure) and len(fig.data) == 2


def test_errors(model, pair, metric):
    clean, corrupt = pair
    longer = model.prepare(tiny_images(2, seed=5), ["Is there a big striped cat in the image?", QUESTIONS[1]])
    with pytest.raises(InputError, match="clean and corrupt batches must share one token layout .* differ"):
        patch_residual(model, clean, longer, metric)
    with pytest.raises(InputError, match="sample count differ: 2 vs 1"):
        patch_heads(model, clean, model.prepare(tiny_images(1), QUESTIONS[:1]), metric)
    with pytest.raises(InputError, match="per-head point .* got 'resid_post'"):
        patch_heads(model, clean, corrupt, metric, point="resid_post")
    with pytest.raises(InputError, match=r"neuron 9999 is out of range for text.blocks.0.mlp.hook_post"):
        patch_neurons(model, clean, corrupt, metric, layer=0, neurons=[9999])
    with pytest.raises(SiteNotFoundError, match="layer 7 is out of range"):
        patch_residual(model, clean, corrupt, metric, layers=[7])
    with pytest.raises(InputError, match="metric must return a scalar"):
        patch_neurons(model, clean, corrupt, lambda logits, batch: logits[:, -1, 0], layer=0, neurons=[0])
    with pytest.raises(InputError, match="yes_ids must be a token id"):
        logit_diff([], 3)
    same = patch_residual(model, clean, clean, metric, positions="last")
    with pytest.raises(InputError, match="clean and corrupt metrics are equal"):
        same.normalized()
    assert same.to_frame()["normalized"].isna().all()
    with pytest.raises(InputError, match="axis 'layer' has 2 entries but 1 labels"):
        PatchingResult(values=torch.zeros(2), axes=("layer",), labels=((0,),), sites=(), clean_metric=1.0,
                       corrupt_metric=0.0)
