"""Edge attribution patching: each score is the directional derivative of the exact edge patch."""

from __future__ import annotations

import math

import pytest
import torch

from vlmlens.errors import InputError
from vlmlens.ops import attribute_edges, logit_diff, patch_edge
from vlmlens.testing import tiny_images

EPS = 1e-2
QS = ["Is there a cat in the image?", "Is there a dog?"]


@pytest.fixture(scope="module")
def setup(model):
    clean, corrupt = model.prepare(tiny_images(2, seed=1), QS), model.prepare(tiny_images(2, seed=2), QS)
    metric = logit_diff(5, 7)
    return clean, corrupt, metric, attribute_edges(model, clean, corrupt, metric)


def test_scores_are_directional_derivatives_of_exact_edge_patches(model, setup):
    clean, corrupt, metric, edges = setup
    assert edges.corrupt_metric == pytest.approx(float(metric(model.forward(corrupt), corrupt)), abs=1e-5)
    n = model.n_layers
    for edge in [("embed", "L1ATTN"), ("L0H1", "L0MLP"), ("L0H2", "L1ATTN"), (f"L{n - 1}MLP", "LOGITS"),
                 ("L0MLP", "LOGITS")]:
        up = patch_edge(model, clean, corrupt, metric, edge, scale=EPS)
        down = patch_edge(model, clean, corrupt, metric, edge, scale=-EPS)
        score = edges.scores[edges.senders.index(edge[0]), edges.receivers.index(edge[1])]
        assert float(score) == pytest.approx((up - down) / (2 * EPS), rel=2e-2, abs=2e-4), edge
    assert patch_edge(model, clean, corrupt, metric, ("L0H0", "LOGITS"), scale=0.0) == pytest.approx(
        edges.corrupt_metric, abs=1e-6)


def test_edge_structure_and_top(model, setup):
    *_, edges = setup
    n, h = model.n_layers, model.n_heads
    assert edges.scores.shape == (1 + n * (h + 1), 2 * n + 1)
    attn1 = edges.receivers.index("L1ATTN")
    assert math.isnan(float(edges.scores[edges.senders.index("L1H0"), attn1]))  # same layer: not an edge
    assert not math.isnan(float(edges.scores[edges.senders.index("L1H0"), edges.receivers.index("L1MLP")]))
    top = edges.top(3)
    assert len(top) == 3 and abs(top[0][1]) >= abs(top[-1][1])
    assert not any(math.isnan(score) for _, score in top)


def test_edge_errors(model, setup):
    clean, corrupt, metric, _ = setup
    with pytest.raises(InputError, match="no such edge"):
        patch_edge(model, clean, corrupt, metric, ("L1H0", "L0ATTN"))
    with pytest.raises(InputError, match="unknown receiver"):
        patch_edge(model, clean, corrupt, metric, ("L0H0", "L9Q"))
    with pytest.raises(InputError, match="unknown receiver"):
        patch_edge(model, clean, corrupt, metric, ("L0H0", f"L1H{model.n_heads}Q"))
    with pytest.raises(InputError, match="unknown receiver"):
        patch_edge(model, clean, corrupt, metric, ("L0H0", f"L1KV{model.n_kv_heads}K"))
    with pytest.raises(InputError, match="receivers must be"):
        attribute_edges(model, clean, corrupt, metric, receivers="neurons")
    with pytest.raises(InputError, match="unknown sender"):
        patch_edge(model, clean, corrupt, metric, ("L0H99", "LOGITS"))


def test_eap_ig_scores_average_directional_derivatives_along_the_input_path(model, setup):
    """ig_steps=k: each edge's score is the mean over the path's midpoints of the exact edge
    patch's directional derivative, taken with the corrupt run's embeddings moved onto the path."""
    from vlmlens.ops import embedding_path, ig_alphas
    from vlmlens.ops.edges import _reader, _reading, _writes
    from vlmlens.ops.interventions import applied

    clean, corrupt, metric, plain = setup
    edges = attribute_edges(model, clean, corrupt, metric, ig_steps=2)
    assert edges.corrupt_metric == pytest.approx(plain.corrupt_metric, abs=1e-6)
    assert edges.senders == plain.senders and edges.receivers == plain.receivers
    path = embedding_path(model, clean, corrupt)
    for sender, receiver in [("embed", "L1ATTN"), ("L0H1", "L0MLP"), ("L0MLP", "LOGITS")]:
        delta = _writes(model, clean)[0][sender] - _writes(model, corrupt)[0][sender]
        want = 0.0
        for alpha in ig_alphas(2):
            ends = []
            for sign in (1, -1):
                add = {receiver: sign * EPS * delta}
                with applied(model, [path(alpha)], corrupt.layout), _reading({receiver: _reader(model, receiver)}, {},
                                                                             add=add):
                    ends.append(float(metric(model.hf_model(**corrupt.inputs).logits, corrupt)))
            want += (ends[0] - ends[1]) / (2 * EPS) / 2
        score = edges.scores[edges.senders.index(sender), edges.receivers.index(receiver)]
        assert float(score) == pytest.approx(want, rel=2e-2, abs=2e-4), (sender, receiver)
    heads = attribute_edges(model, clean, corrupt, metric, ig_steps=2, receivers="heads")
    last = model.n_layers - 1
    parts = [j for j, name in enumerate(heads.receivers) if name.startswith(f"L{last}") and not name.endswith("MLP")]
    block = edges.scores[:, edges.receivers.index(f"L{last}ATTN")]
    exists = ~block.isnan()
    assert torch.allclose(heads.scores[:, parts].sum(1)[exists], block[exists], rtol=1e-4, atol=1e-6)
    with pytest.raises(InputError, match="ig_steps"):
        attribute_edges(model, clean, corrupt, metric, ig_steps=-2)


@pytest.fixture(scope="module")
def per_head(model, setup):
    clean, corrupt, metric, _ = setup
    return attribute_edges(model, clean, corrupt, metric, receivers="heads")


def test_per_head_scores_are_directional_derivatives_of_exact_head_patches(model, setup, per_head):
    """Each head's query (and each key-value head's key and value) reads the sender's write on
    its own; the others read the corrupt run. Checked for queries, keys and values (grouped-query
    attention in every tiny family: the key-value head is shared by two query heads)."""
    clean, corrupt, metric, _ = setup
    last = model.n_layers - 1
    for edge in [("embed", "L0H1Q"), ("embed", "L0KV0K"), ("L0H2", f"L{last}H3Q"), ("L0MLP", f"L{last}KV{model.n_kv_heads - 1}V"),
                 ("L0H0", f"L{last}KV0K"), ("embed", f"L{last}KV0V")]:
        up = patch_edge(model, clean, corrupt, metric, edge, scale=EPS)
        down = patch_edge(model, clean, corrupt, metric, edge, scale=-EPS)
        score = per_head.scores[per_head.senders.index(edge[0]), per_head.receivers.index(edge[1])]
        assert float(score) == pytest.approx((up - down) / (2 * EPS), rel=2e-2, abs=2e-4), edge
    assert patch_edge(model, clean, corrupt, metric, ("L0H0", f"L{last}H0Q"), scale=0.0) == pytest.approx(
        per_head.corrupt_metric, abs=1e-6)


def test_a_blocks_score_is_the_sum_of_its_heads_query_key_and_value_scores(model, setup, per_head):
    *_, blocks = setup
    n, h, g = model.n_layers, model.n_heads, model.n_kv_heads
    assert per_head.senders == blocks.senders
    assert len(per_head.receivers) == n * (h + 2 * g + 1) + 1
    for layer in range(n):
        parts = [per_head.receivers.index(f"L{layer}H{i}Q") for i in range(h)]
        parts += [per_head.receivers.index(f"L{layer}KV{i}{kind}") for kind in "KV" for i in range(g)]
        total = per_head.scores[:, parts].sum(1)
        block = blocks.scores[:, blocks.receivers.index(f"L{layer}ATTN")]
        assert torch.equal(total.isnan(), block.isnan())
        exists = ~block.isnan()
        assert exists.sum() == 1 + layer * (h + 1)  # embed and every earlier head and MLP
        assert torch.allclose(total[exists], block[exists], rtol=1e-4, atol=1e-6), layer
        assert total[exists].abs().max() > 0
    same = [j for j, name in enumerate(per_head.receivers) if name.endswith("MLP") or name == "LOGITS"]
    for j in same:
        k = blocks.receivers.index(per_head.receivers[j])
        assert torch.allclose(per_head.scores[:, j], blocks.scores[:, k], rtol=1e-5, atol=1e-7, equal_nan=True)
