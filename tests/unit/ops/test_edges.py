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


def _largest(edges, kind: str) -> tuple[str, str]:
    """The edge with the largest |score| into a receiver of this kind (``Q``, ``K``, ``V``)."""
    cols = [j for j, name in enumerate(edges.receivers) if name.endswith(kind) and not name.endswith("MLP")]
    block = edges.scores[:, cols].nan_to_num(0.0).abs()
    i, j = divmod(int(block.argmax()), len(cols))
    return edges.senders[i], edges.receivers[cols[j]]


@pytest.fixture(scope="module")
def sharp(family):
    """A tiny model with its text queries and keys scaled up: random weights attend almost
    uniformly, which leaves a query or key edge too small to check; this one attends sharply."""
    from vlmlens.testing import tiny_vlm

    sharp = tiny_vlm(family, seed=3)
    with torch.no_grad():
        for layer in range(sharp.n_layers):
            for part in ("q_proj", "k_proj"):
                sharp.block_module("text", layer, part).weight.mul_(6.0)
    clean, corrupt = sharp.prepare(tiny_images(2, seed=1), QS), sharp.prepare(tiny_images(2, seed=2), QS)
    metric = logit_diff(5, 7)
    return sharp, clean, corrupt, metric, attribute_edges(sharp, clean, corrupt, metric, receivers="heads")


def test_per_head_scores_are_directional_derivatives_of_exact_head_patches(sharp):
    """Each head's query (and each key-value head's key and value) reads the sender's write on
    its own; the others read the corrupt run. Checked on the largest query, key and value edges
    (each 10x above the tolerance, so a patch that dropped the write would fail) and two more."""
    model, clean, corrupt, metric, per_head = sharp
    last = model.n_layers - 1
    edges = [_largest(per_head, kind) for kind in "QKV"] + [("L0H2", f"L{last}H3Q"), ("embed", f"L{last}KV0V")]
    for edge in edges:
        up = patch_edge(model, clean, corrupt, metric, edge, scale=EPS)
        down = patch_edge(model, clean, corrupt, metric, edge, scale=-EPS)
        score = float(per_head.scores[per_head.senders.index(edge[0]), per_head.receivers.index(edge[1])])
        assert score == pytest.approx((up - down) / (2 * EPS), rel=2e-2, abs=1e-5), edge
        if edge in edges[:3]:
            assert abs(score) > 1e-4, edge
    assert patch_edge(model, clean, corrupt, metric, ("L0H0", f"L{last}H0Q"), scale=0.0) == pytest.approx(
        per_head.corrupt_metric, abs=1e-6)


@pytest.mark.parametrize("receiver", ["L1H2Q", "L1KV0K", "L1KV0V"])
def test_a_head_patch_changes_only_that_heads_rows_of_the_projection(model, setup, receiver):
    """Checked against the attention module's head size, not the code's own slicing: rows ``h * head_dim``
    up to ``(h + 1) * head_dim`` of the projection's output change, and nothing else."""
    from vlmlens.ops.edges import _head_reading, _recording, _writes

    clean, corrupt, *_ = setup
    part = {"Q": "q_proj", "K": "k_proj", "V": "v_proj"}[receiver[-1]]
    head = int(receiver[-2])
    projection = model.block_module("text", 1, part)
    delta = _writes(model, clean)[0]["L0H1"] - _writes(model, corrupt)[0]["L0H1"]
    outputs = {}
    with torch.no_grad():
        with _recording({"plain": projection}, outputs):
            model.hf_model(**corrupt.inputs)
        with _head_reading(model, receiver, delta), _recording({"patched": projection}, outputs):
            model.hf_model(**corrupt.inputs)
    size = model.block_module("text", 1, "attn").head_dim  # the HF attention module's own head size
    changed = (outputs["patched"] != outputs["plain"]).flatten(0, -2).any(0).nonzero().flatten().tolist()
    assert changed and set(changed) <= set(range(head * size, (head + 1) * size))
    assert len(changed) > size // 2


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


def test_scores_do_not_depend_on_the_scoring_chunk(model, setup, per_head, monkeypatch):
    """Receivers and senders are scored SCORE_CHUNK at a time; chunks of 3 (several per pass,
    one ragged) give the same matrix as one chunk."""
    import vlmlens.ops.edges as edges_module

    clean, corrupt, metric, _ = setup
    monkeypatch.setattr(edges_module, "SCORE_CHUNK", 3)
    chunked = attribute_edges(model, clean, corrupt, metric, receivers="heads")
    assert torch.allclose(chunked.scores, per_head.scores, rtol=1e-5, atol=1e-7, equal_nan=True)
