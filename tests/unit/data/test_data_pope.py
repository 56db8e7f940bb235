"""POPE question files: the real splits, strict line checks, the dataset API, HF loading."""

from __future__ import annotations

import json
import re
import sys
import types
from pathlib import Path

import pytest
from PIL import Image

from vlmlens.data import PopeDataset, PopeItem, load_pope, load_pope_hf, parse_object_name
from vlmlens.errors import DataError, VLMLensError


def _wrong_type(call, match: str) -> None:
    """A wrong-typed argument raises: our own error (wording pinned) or, when tests run
    with jaxtyping/beartype runtime checking, the checker's TypeError first."""
    with pytest.raises((DataError, TypeError)) as info:
        call()
    if not type(info.value).__module__.startswith(("jaxtyping", "beartype")):
        assert re.search(match, str(info.value)), str(info.value)

POPE_DIR = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "pope"
SPLITS = ("random", "popular", "adversarial")

needs_pope = pytest.mark.skipif(
    not (POPE_DIR / "coco_pope_random.json").is_file(),
    reason=f"real POPE files not found at {POPE_DIR} (CI clones shared/ beside the repo)",
)


def _row(qid: int, image: str = "a.png", label: str = "yes", obj: str = "dog") -> dict:
    return {"question_id": qid, "image": image, "text": f"Is there a {obj} in the image?", "label": label}


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@needs_pope
@pytest.mark.parametrize("split", SPLITS)
def test_real_split_counts(split: str) -> None:
    ds = load_pope(POPE_DIR / f"coco_pope_{split}.json", None, check_images=False)
    assert len(ds) == 3000
    assert ds.split == split
    assert ds.labels.count("yes") == 1500 and ds.labels.count("no") == 1500
    assert len(ds.image_names) == 500
    assert [i.question_id for i in ds] == list(range(1, 3001))
    assert all(i.object_name is not None for i in ds)  # every question has the standard wording
    assert ds.ground_truth(ds[0]) is None


@needs_pope
def test_real_splits_share_images_and_positives() -> None:
    sets = {s: load_pope(POPE_DIR / f"coco_pope_{s}.json", None, check_images=False) for s in SPLITS}
    images = {s: ds.image_names for s, ds in sets.items()}
    assert images["random"] == images["popular"] == images["adversarial"]
    yes = {s: [(i.image, i.object_name) for i in ds if i.label == "yes"] for s, ds in sets.items()}
    assert yes["random"] == yes["popular"] == yes["adversarial"]


@needs_pope
def test_real_file_quirk_an_before_consonant_is_parsed() -> None:
    ds = load_pope(POPE_DIR / "coco_pope_random.json", None, check_images=False)
    odd = [i for i in ds if i.text.startswith("Is there an traffic light")]
    assert odd and all(i.object_name == "traffic light" for i in odd)


def test_parse_object_name() -> None:
    assert parse_object_name("Is there an apple in the image?") == "apple"
    assert parse_object_name("Is there a hot dog in the image?") == "hot dog"
    assert parse_object_name("is there a dog in the image?") is None
    assert parse_object_name("Is there a dog?") is None


@pytest.mark.parametrize(
    ("bad_line", "expected"),
    [
        ('{"question_id": 3, "image": "a.png"', "invalid JSON"),
        ("[1, 2, 3]", "expected a JSON object, got list"),
        ('{"question_id": 3, "image": "a.png", "label": "no"}', r"missing key\(s\) \['text'\]"),
        (json.dumps(_row(3, label="Yes")), "label must be 'yes' or 'no'.*got 'Yes'"),
        (json.dumps(_row(3, label="maybe")), "label must be .*got 'maybe'"),
        (json.dumps({**_row(3), "question_id": "3"}), "question_id must be an integer, got '3'"),
        (json.dumps({**_row(3), "image": ""}), "'image' must be a non-empty string"),
        (json.dumps(_row(1)), r"duplicate question_id 1 \(first seen on line 1\)"),
    ],
)
def test_bad_line_names_file_and_line(tmp_path: Path, bad_line: str, expected: str) -> None:
    f = _write(tmp_path / "q.json", [json.dumps(_row(1)), json.dumps(_row(2, label="no")), bad_line])
    with pytest.raises(DataError, match=re.escape(f"{f}:3: ") + expected):
        load_pope(f, None, check_images=False)


def test_errors_are_vlmlens_and_value_errors(tmp_path: Path) -> None:
    f = _write(tmp_path / "q.json", ["not json"])
    with pytest.raises(VLMLensError):
        load_pope(f, None)
    with pytest.raises(ValueError):
        load_pope(f, None)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="POPE question file not found: .*nope.json"):
        load_pope(tmp_path / "nope.json", None)
    with pytest.raises(DataError, match="no questions found"):
        load_pope(_write(tmp_path / "e.json", ["", "  "]), None)


def test_blank_lines_skipped_line_numbers_kept(tmp_path: Path) -> None:
    f = _write(tmp_path / "q.json", [json.dumps(_row(1)), "", json.dumps(_row(2)), "{oops"])
    with pytest.raises(DataError, match=re.escape(f"{f}:4: ")):
        load_pope(f, None)
    f = _write(tmp_path / "q2.json", [json.dumps(_row(1)), "", json.dumps(_row(2, label="no"))])
    assert load_pope(f, None).labels == ("yes", "no")


def test_missing_image_is_named(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "img" / "a.png")
    f = _write(tmp_path / "q.json", [json.dumps(_row(1, "a.png")), json.dumps(_row(2, "b.png"))])
    with pytest.raises(DataError, match=r"image 'b.png' named in .*q.json is missing from .*img"):
        load_pope(f, tmp_path / "img")
    ds = load_pope(f, tmp_path / "img", check_images=False)  # questions only
    with pytest.raises(DataError, match="image file not found: .*b.png"):
        ds.image(1)
    with pytest.raises(DataError, match="image directory not found"):
        load_pope(f, tmp_path / "nowhere")


def test_images_load_as_rgb(tmp_path: Path) -> None:
    (tmp_path / "img").mkdir()
    Image.new("L", (5, 3), color=7).save(tmp_path / "img" / "a.png")
    f = _write(tmp_path / "coco_pope_adversarial.json", [json.dumps(_row(1, "a.png"))])
    ds = load_pope(f, tmp_path / "img")
    assert ds.split == "adversarial"
    for key in (0, ds[0], "a.png"):
        im = ds.image(key)
        assert im.mode == "RGB" and im.size == (5, 3) and im.getpixel((0, 0)) == (7, 7, 7)
    assert ds[0].image_path == tmp_path / "img" / "a.png"
    with pytest.raises(DataError, match="no question in this dataset uses image 'zzz.png'"):
        ds.image("zzz.png")


def test_no_image_dir_means_no_images(tmp_path: Path) -> None:
    ds = load_pope(_write(tmp_path / "q.json", [json.dumps(_row(1))]), None)
    assert ds[0].image_path is None
    with pytest.raises(DataError, match="pass image_dir to load_pope"):
        ds.image(0)


def _dataset(n_images: int = 3) -> PopeDataset:
    items = []
    for k in range(n_images * 2):
        items.append(
            PopeItem(question_id=k + 1, image=f"{k // 2}.jpg", text="Is there a cat in the image?",
                     label="yes" if k % 2 == 0 else "no", object_name="cat")
        )
    return PopeDataset(items=tuple(items), split="random")


def test_dataset_api() -> None:
    ds = _dataset()
    assert len(ds) == 6 and list(ds) == list(ds.items)
    assert ds[-1].question_id == 6
    assert ds.labels == ("yes", "no") * 3
    assert ds.image_names == ("0.jpg", "1.jpg", "2.jpg")
    sub = ds.subset(3)
    assert isinstance(sub, PopeDataset) and [i.question_id for i in sub] == [1, 2, 3] and sub.split == "random"
    sel = ds.select([4, 0, -1])
    assert [i.question_id for i in sel] == [5, 1, 6]
    assert len(ds) == 6  # the original is untouched
    assert list(ds.to_frame().columns) == ["question_id", "image", "text", "label", "object_name"]
    assert "questions=6" in repr(ds)


def test_dataset_api_errors() -> None:
    ds = _dataset()
    with pytest.raises(DataError, match="indices must not repeat"):
        ds.select([1, 1])
    with pytest.raises(DataError, match=r"indices must be ints in \[-6, 6\), got \[6\]"):
        ds.select([6])
    with pytest.raises(DataError, match=r"subset: n must be an int in \[1, 6\], got 7"):
        ds.subset(7)
    _wrong_type(lambda: ds["0"], "use .select")  # type: ignore[index]
    _wrong_type(lambda: PopeDataset(items=list(ds.items)), "must be a tuple of PopeItem")  # type: ignore[arg-type]
    _wrong_type(lambda: PopeItem(question_id=1, image="a", text="t", label="YES"), "label must be 'yes' or 'no'")  # type: ignore[arg-type]


def test_item_equality_ignores_location() -> None:
    a = PopeItem(question_id=1, image="a.png", text="t", label="yes", image_path=Path("/x/a.png"))
    b = PopeItem(question_id=1, image="a.png", text="t", label="yes")
    assert a == b


def test_hf_loader_without_datasets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(DataError, match=r"needs the `datasets` package.*pip install datasets.*lmms-lab/POPE"):
        load_pope_hf("random")


def test_hf_loader_not_cached(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setitem(sys.modules, "datasets", types.ModuleType("datasets"))
    with pytest.raises(DataError, match=r"lmms-lab/POPE is not in the local Hugging Face cache.*never downloads"):
        load_pope_hf("popular", cache_dir=tmp_path)


def test_hf_loader_bad_split() -> None:
    with pytest.raises(DataError, match="unknown POPE split 'test'; known: random, popular, adversarial"):
        load_pope_hf("test")
