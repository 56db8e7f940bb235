"""SynthPOPE: question statistics per split, determinism, export round trip, visibility, truth."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vlmlens.data import (
    KINDS,
    SCENE_TYPES,
    VOCABULARY,
    PopeDataset,
    SceneObject,
    SceneTruth,
    SynthConfig,
    SynthPope,
    load_pope,
    load_synth,
    render_scene,
    synth_pope,
)
from vlmlens.data.objects import shape_mask
from vlmlens.errors import DataError


def _wrong_type(call, match: str) -> None:
    """A wrong-typed argument raises: our own error (wording pinned) or, when tests run
    with jaxtyping/beartype runtime checking, the checker's TypeError first."""
    with pytest.raises((DataError, TypeError)) as info:
        call()
    if not type(info.value).__module__.startswith(("jaxtyping", "beartype")):
        assert re.search(match, str(info.value)), str(info.value)

N = 60  # images per test split: enough for the statistics, fast to build


@pytest.fixture(scope="module")
def splits() -> dict[str, SynthPope]:
    return {s: synth_pope(s, N, seed=3) for s in ("random", "popular", "adversarial")}


def _counts(ds: SynthPope) -> tuple[dict[str, int], dict[tuple[str, str], int]]:
    """Object frequencies and pair co-occurrence counts over the ground truth (independent of the library)."""
    freq: dict[str, int] = {}
    cooc: dict[tuple[str, str], int] = {}
    for scene in ds.scenes:
        names = set(scene.names)
        for a in names:
            freq[a] = freq.get(a, 0) + 1
            for b in names:
                cooc[a, b] = cooc.get((a, b), 0) + 1
    return freq, cooc


def test_vocabulary() -> None:
    assert len(VOCABULARY) >= 12
    assert all(k.name.isalpha() and k.name.islower() for k in VOCABULARY)
    looks = {(k.shape, k.colour, k.texture, k.aspect) for k in VOCABULARY}
    assert len(looks) == len(VOCABULARY)  # every kind looks different
    assert {n for st in SCENE_TYPES for n, _ in st.objects} == set(KINDS)


@pytest.mark.parametrize("split", ["random", "popular", "adversarial"])
def test_split_shape_and_balance(splits: dict[str, SynthPope], split: str) -> None:
    ds = splits[split]
    assert len(ds) == N * 6 and ds.split == split
    assert ds.labels == ("yes", "no") * (N * 3)  # POPE alternates yes/no within an image
    assert [i.question_id for i in ds] == list(range(1, N * 6 + 1))
    assert len(ds.image_names) == N == len(ds.scenes)
    for k in range(N):
        chunk = ds.items[6 * k : 6 * k + 6]
        assert len({i.image for i in chunk}) == 1
        assert len({i.object_name for i in chunk}) == 6  # no object asked twice about one image
        truth = ds.ground_truth(chunk[0])
        assert truth is not None and len(truth.objects) >= 3
        for item in chunk:
            assert truth.has(item.object_name) == (item.label == "yes")
            article = "an" if item.object_name[0] in "aeiou" else "a"
            assert item.text == f"Is there {article} {item.object_name} in the image?"


def test_images_and_positives_shared_across_splits(splits: dict[str, SynthPope]) -> None:
    r, p, a = splits["random"], splits["popular"], splits["adversarial"]
    assert r.scenes == p.scenes == a.scenes
    yes = [[(i.image, i.object_name) for i in ds if i.label == "yes"] for ds in (r, p, a)]
    assert yes[0] == yes[1] == yes[2]
    assert np.array_equal(r.array(5), a.array(5))


def test_popular_negatives_are_the_most_frequent_absent(splits: dict[str, SynthPope]) -> None:
    ds = splits["popular"]
    freq, _ = _counts(ds)
    for k in range(N):
        chunk = ds.items[6 * k : 6 * k + 6]
        truth = ds.ground_truth(chunk[0])
        negatives = {i.object_name for i in chunk if i.label == "no"}
        others = [freq.get(n, 0) for n in KINDS if n not in negatives and not truth.has(n)]
        assert min(freq.get(n, 0) for n in negatives) >= max(others)


def test_object_frequencies_are_uneven_and_popular_differs_from_random(splits: dict[str, SynthPope]) -> None:
    freq, _ = _counts(splits["random"])
    assert max(freq.values()) >= 2.5 * min(freq.get(n, 0) for n in KINDS)
    neg = {s: {i.object_name for i in splits[s] if i.label == "no"} for s in ("random", "popular")}
    assert len(neg["popular"]) < len(neg["random"])  # popular keeps asking about the same few objects


def test_adversarial_negatives_co_occur_more(splits: dict[str, SynthPope]) -> None:
    _, cooc = _counts(splits["random"])

    def mean_cooc(ds: SynthPope) -> float:
        scores = []
        for k in range(N):
            chunk = ds.items[6 * k : 6 * k + 6]
            pos = [i.object_name for i in chunk if i.label == "yes"]
            for neg in (i.object_name for i in chunk if i.label == "no"):
                scores.append(sum(cooc.get((p, neg), 0) for p in pos))
        return float(np.mean(scores))

    adv, rnd = mean_cooc(splits["adversarial"]), mean_cooc(splits["random"])
    assert adv > 1.5 * rnd


def test_scene_types_shape_co_occurrence() -> None:
    ds = synth_pope("random", 200, seed=0)
    freq, cooc = _counts(ds)
    # Objects of one scene type come together: P(bowl | cup) well above P(bowl).
    assert cooc["cup", "bowl"] / freq["cup"] > 1.5 * freq["bowl"] / len(ds.scenes)
    assert cooc["cup", "car"] / freq["cup"] < freq["car"] / len(ds.scenes)


def test_seed_determinism_byte_identical(tmp_path: Path) -> None:
    def export(seed: int, where: str) -> dict[str, bytes]:
        out = tmp_path / where
        synth_pope("adversarial", 6, seed=seed).export(out)
        return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}

    a, b, c = export(7, "a"), export(7, "b"), export(8, "c")
    assert a == b
    assert set(a) == set(c) and a["adversarial.json"] != c["adversarial.json"]
    assert all(a[k] != c[k] for k in a if k.startswith("images/"))


def test_scene_does_not_depend_on_dataset_size() -> None:
    small, big = synth_pope("random", 3, seed=1), synth_pope("random", 9, seed=1)
    assert small.scenes == big.scenes[:3]
    assert np.array_equal(small.array(2), big.array(2))


def test_export_load_round_trip(tmp_path: Path) -> None:
    ds = synth_pope("popular", 5, seed=2, image_size=48, occlusion=0.3)
    paths = ds.export(tmp_path)
    assert paths.questions_file == tmp_path / "popular.json" and paths.image_dir == tmp_path / "images"
    back = load_pope(paths.questions_file, paths.image_dir)
    assert back.items == ds.items and back.split == "popular"
    for name in ds.image_names:
        assert np.array_equal(np.asarray(back.image(name)), ds.array(name))
    withtruth = load_synth(tmp_path, "popular")
    assert all(withtruth.ground_truth(t.image_id) == t for t in ds.scenes)
    assert back.ground_truth(0) is None


def test_export_refuses_to_clobber(tmp_path: Path) -> None:
    synth_pope("random", 2, seed=0).export(tmp_path)
    synth_pope("adversarial", 2, seed=0).export(tmp_path)  # same images and truth: fine
    with pytest.raises(DataError, match="random.json already exists; pass overwrite=True"):
        synth_pope("random", 2, seed=0).export(tmp_path)
    with pytest.raises(DataError, match="holds a different SynthPOPE dataset"):
        synth_pope("popular", 2, seed=1).export(tmp_path)
    synth_pope("popular", 2, seed=1).export(tmp_path, overwrite=True)


def test_images_rgb_uint8(splits: dict[str, SynthPope]) -> None:
    ds = splits["random"]
    im = ds.image(0)
    assert isinstance(im, Image.Image) and im.mode == "RGB" and im.size == (64, 64)
    arr = ds.array(ds[0])
    assert arr.dtype == np.uint8 and arr.shape == (64, 64, 3)
    assert np.array_equal(np.asarray(im), arr)


def _without_objects(truth: SceneTruth) -> SceneTruth:
    return dataclasses.replace(truth, objects=())


@pytest.mark.parametrize("noise", [0.0, 0.04])
def test_objects_are_visible_and_masks_match_pixels(noise: float) -> None:
    ds = synth_pope("random", 20, seed=5, noise=noise, occlusion=0.4)
    for truth in ds.scenes:
        img = render_scene(truth, seed=5, noise=noise).astype(float)
        bare = render_scene(_without_objects(truth), seed=5, noise=noise).astype(float)
        diff = np.abs(img - bare).mean(axis=2)
        masks = truth.visible_masks()
        anywhere = np.logical_or.reduce(masks)
        assert np.all(diff[~anywhere] == 0)  # nothing drawn outside the objects
        for obj, m in zip(truth.objects, masks):
            if m.sum() >= 4:
                assert diff[m].mean() > 40, (truth.image_id, obj.name)


def test_every_kind_stands_out_on_every_backdrop() -> None:
    for st in SCENE_TYPES:
        for kind in VOCABULARY:
            truth = SceneTruth(image_id="t.png", size=(32, 32), scene_type=st.name,
                               objects=(SceneObject(name=kind.name, bbox=(4, 4, 28, 28)),))
            img = render_scene(truth, seed=0, noise=0.0).astype(float)
            bare = render_scene(_without_objects(truth), seed=0, noise=0.0).astype(float)
            m = truth.object_mask(kind.name)
            assert np.abs(img - bare).mean(axis=2)[m].mean() > 40, (st.name, kind.name)


def test_contrast_fades_objects() -> None:
    truth = synth_pope("random", 1, seed=0).scenes[0]
    bare = render_scene(_without_objects(truth), seed=0, noise=0.0).astype(float)
    m = np.logical_or.reduce(truth.visible_masks())
    full = np.abs(render_scene(truth, seed=0, noise=0.0) - bare)[m].mean()
    faint = np.abs(render_scene(truth, seed=0, noise=0.0, contrast=0.25) - bare)[m].mean()
    assert faint == pytest.approx(full / 4, abs=1.0)


def test_occlusion_knob() -> None:
    def silhouettes(truth: SceneTruth) -> list[int]:
        return [int(shape_mask(o.name, o.bbox).sum()) for o in truth.objects]

    apart = synth_pope("random", 30, seed=0)
    for truth in apart.scenes:  # no overlap, and a one-pixel gap between boxes
        for i, a in enumerate(truth.objects):
            for b in truth.objects[i + 1 :]:
                assert a.bbox[2] < b.bbox[0] or b.bbox[2] < a.bbox[0] or a.bbox[3] < b.bbox[1] or b.bbox[3] < a.bbox[1]
        assert [int(m.sum()) for m in truth.visible_masks()] == silhouettes(truth)
    crowded = synth_pope("random", 30, seed=0, occlusion=0.6, clutter=(5, 6), object_scale=(0.3, 0.4))
    hidden = 0
    for truth in crowded.scenes:
        visible = [int(m.sum()) for m in truth.visible_masks()]
        hidden += sum(v < s for v, s in zip(visible, silhouettes(truth)))
        assert all(v >= (1 - 0.6) * s for v, s in zip(visible, silhouettes(truth)))
        assert int(np.sum([m for m in truth.visible_masks()], axis=0).max()) == 1  # visible masks are disjoint
    assert hidden > 10  # many objects are partly hidden


def test_patch_mask() -> None:
    truth = SceneTruth(image_id="p.png", size=(8, 8), scene_type="office",
                       objects=(SceneObject(name="phone", bbox=(0, 0, 4, 4)),
                                SceneObject(name="laptop", bbox=(2, 2, 8, 8))))
    # laptop (a full rectangle) is drawn on top and hides the phone's bottom-right corner
    assert truth.patch_mask("phone", grid=(2, 2)).tolist() == [[True, False], [False, False]]
    assert truth.patch_mask("laptop", grid=(2, 2)).tolist() == [[True, True], [True, True]]
    assert truth.patch_mask("laptop", grid=(2, 2), min_coverage=0.5).tolist() == [[False, False], [False, True]]
    assert np.array_equal(truth.patch_mask("phone", grid=(8, 8)), truth.object_mask("phone"))
    assert truth.object_mask("phone").sum() == 16 - 4
    assert truth.patch_mask("laptop", grid=(1, 1)).tolist() == [[True]]
    assert truth.patch_mask("phone", grid=(3, 5)).shape == (3, 5)


def test_patch_mask_on_generated_scenes() -> None:
    ds = synth_pope("adversarial", 10, seed=4, image_size=96)
    for truth in ds.scenes:
        for obj in truth.objects:
            pm = truth.patch_mask(obj.name, grid=(24, 24))
            assert pm.any()
            rows, cols = np.nonzero(pm)
            x0, y0, x1, y1 = obj.bbox  # covered patches lie inside the box (96 / 24 = 4 px patches)
            assert rows.min() >= y0 // 4 and rows.max() <= (y1 - 1) // 4
            assert cols.min() >= x0 // 4 and cols.max() <= (x1 - 1) // 4


def test_patch_mask_errors() -> None:
    truth = synth_pope("random", 1, seed=0).scenes[0]
    absent = next(n for n in KINDS if not truth.has(n))
    with pytest.raises(DataError, match=f"object '{absent}' is not in image 'synth_00000.png'"):
        truth.patch_mask(absent, grid=(4, 4))
    with pytest.raises(DataError, match="unknown SynthPOPE object 'unicorn'"):
        truth.patch_mask("unicorn", grid=(4, 4))
    with pytest.raises(DataError, match=r"patch grid \(65, 4\) does not fit a 64x64 image"):
        truth.patch_mask(truth.objects[0].name, grid=(65, 4))


def test_subset_and_select_keep_type_and_truth(splits: dict[str, SynthPope]) -> None:
    ds = splits["adversarial"]
    sub = ds.subset(12)
    assert isinstance(sub, SynthPope) and len(sub) == 12 and len(sub.scenes) == 2
    sel = ds.select([13, 0])
    assert [s.image_id for s in sel.scenes] == ["synth_00000.png", "synth_00002.png"]
    assert np.array_equal(sel.array(0), ds.array(13))
    assert isinstance(sel, PopeDataset) and sel.config == ds.config


def test_kwargs_override_config() -> None:
    cfg = SynthConfig(n_images=2, image_size=32, noise=0.0, object_scale=(0.25, 0.3))
    ds = synth_pope("random", config=cfg, seed=9)
    assert ds.config == dataclasses.replace(cfg, seed=9)
    assert ds.image(0).size == (32, 32)
    assert SynthConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"n_images": 0}, r"SynthConfig.n_images must be an int >= 1, got 0"),
        ({"seed": -1}, r"seed must be an int >= 0, got -1"),
        ({"image_size": 8}, r"image_size must be an int in \[16, 1024\]"),
        ({"object_scale": (0.3, 0.2)}, r"object_scale must be a tuple \(min, max\)"),
        ({"image_size": 16, "object_scale": (0.2, 0.3)}, r"gives objects of 3.2 px"),
        ({"clutter": (2, 4)}, r"clutter min 2 is below questions_per_image 3"),
        ({"clutter": (3, 20)}, r"clutter max 20 leaves fewer than 3 absent objects"),
        ({"noise": -0.1}, r"noise must be a number in \[0, 0.5\]"),
        ({"contrast": 0.0}, r"contrast must be a number in \(0, 1\]"),
        ({"occlusion": 1.0}, r"occlusion must be a number in \[0, 1\)"),
        ({"off_scene_rate": 2.0}, r"off_scene_rate must be a probability"),
        ({"clutter": (6, 8), "object_scale": (0.3, 0.4)}, r"too crowded to keep objects apart"),
    ],
)
def test_config_validation(kwargs: dict, expected: str) -> None:
    with pytest.raises(DataError, match=expected):
        SynthConfig(**kwargs)


def test_wrong_types() -> None:
    _wrong_type(lambda: SynthConfig(object_scale=[0.2, 0.3]), r"object_scale must be a tuple")  # type: ignore[arg-type]
    _wrong_type(lambda: SynthConfig(scene_background=1), r"scene_background must be a bool")  # type: ignore[arg-type]
    _wrong_type(lambda: synth_pope("hard", 2), "unknown SynthPOPE split 'hard'; known: random, popular, adversarial")  # type: ignore[arg-type]


def test_unknown_config_key() -> None:
    with pytest.raises(DataError, match=r"unknown SynthConfig key\(s\) \['colour'\]"):
        SynthConfig.from_dict({"colour": 1})
