"""Image decoding, dataset layouts, bad rows, splits and the image table's targets."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from supemb.data.image_filename_layouts import parse_agedb, parse_utkface, read_agedb_table, read_utkface_table
from supemb.data.image_files import DEFAULT_MAX_PIXELS, load_image, to_rgb
from supemb.data.image_layouts import detect_format, load_image_table, read_csv_table, read_folder_table
from supemb.data.image_table import ImageRecord, ImageTable, verify_images
from supemb.data.splits import assign_splits, split_labels
from supemb.errors import UserError


def _png(path: Path, color: tuple[int, int, int] = (10, 20, 30), size: tuple[int, int] = (8, 6)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _write_csv(path: Path, text: str) -> Path:
    path.write_text(text.strip() + "\n", encoding="utf-8")
    return path


# ------------------------------------------------------------------ decoding


def test_load_rgb_png_roundtrip(tmp_path: Path) -> None:
    arr = np.random.default_rng(0).integers(0, 256, (5, 7, 3), dtype=np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.png")
    img = load_image(tmp_path / "a.png")
    assert img.mode == "RGB" and img.size == (7, 5)
    np.testing.assert_array_equal(np.asarray(img), arr)


def test_greyscale_becomes_rgb(tmp_path: Path) -> None:
    Image.new("L", (4, 3), 77).save(tmp_path / "g.png")
    a = np.asarray(load_image(tmp_path / "g.png"))
    assert a.shape == (3, 4, 3) and (a == 77).all()


def test_rgba_is_composited_on_white(tmp_path: Path) -> None:
    img = Image.new("RGBA", (2, 1))
    img.putpixel((0, 0), (255, 0, 0, 0))  # fully transparent red -> white
    img.putpixel((1, 0), (0, 0, 255, 255))  # opaque blue stays blue
    img.save(tmp_path / "a.png")
    a = np.asarray(load_image(tmp_path / "a.png"))
    assert a[0, 0].tolist() == [255, 255, 255]
    assert a[0, 1].tolist() == [0, 0, 255]


def test_half_transparent_blends(tmp_path: Path) -> None:
    Image.new("RGBA", (1, 1), (0, 0, 0, 128)).save(tmp_path / "a.png")
    v = np.asarray(load_image(tmp_path / "a.png"))[0, 0]
    assert 120 <= v[0] <= 135 and v[0] == v[1] == v[2]


def test_palette_with_transparency(tmp_path: Path) -> None:
    img = Image.new("P", (2, 1))
    img.putpalette([0, 255, 0] + [0, 0, 0] * 255)
    img.info["transparency"] = 0
    img.save(tmp_path / "p.png", transparency=0)
    a = np.asarray(load_image(tmp_path / "p.png"))
    assert a[0, 0].tolist() == [255, 255, 255]  # index 0 is transparent


def test_16_bit_greyscale_scaled_to_8_bit(tmp_path: Path) -> None:
    arr = np.array([[0, 65535, 257 * 100]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "g16.png")
    assert Image.open(tmp_path / "g16.png").mode.startswith("I;16")
    a = np.asarray(load_image(tmp_path / "g16.png"))
    assert a[0, :, 0].tolist() == [0, 255, 100]


def test_32_bit_integer_modes() -> None:
    eight = Image.fromarray(np.array([[0, 200]], dtype=np.int32))
    assert eight.mode == "I"
    assert np.asarray(to_rgb(eight))[0, :, 0].tolist() == [0, 200]
    sixteen = Image.fromarray(np.array([[0, 65535]], dtype=np.int32))
    assert np.asarray(to_rgb(sixteen))[0, :, 0].tolist() == [0, 255]
    flt = Image.fromarray(np.array([[0.0, 0.5, 1.0]], dtype=np.float32))
    assert np.asarray(to_rgb(flt))[0, :, 0].tolist() == [0, 128, 255]


def test_cmyk_jpeg(tmp_path: Path) -> None:
    Image.new("CMYK", (4, 4), (0, 0, 0, 0)).save(tmp_path / "c.jpg")
    a = np.asarray(load_image(tmp_path / "c.jpg"))
    assert a.shape == (4, 4, 3) and a.min() > 240  # no ink = white


def test_exif_orientation_applied(tmp_path: Path) -> None:
    # Stored 32 wide x 16 high with a red left band; orientation 6 means
    # "rotate 90 degrees clockwise to display": upright it is 16 wide x 32
    # high with the red band on top.
    arr = np.zeros((16, 32, 3), np.uint8)
    arr[:, :8] = (255, 0, 0)
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(arr).save(tmp_path / "r.jpg", exif=exif.tobytes(), quality=100, subsampling=0)
    up = load_image(tmp_path / "r.jpg")
    assert up.size == (16, 32)
    a = np.asarray(up).astype(int)
    assert a[:4, :, 0].mean() > 230 and a[-8:, :, 0].mean() < 25


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"nope\.jpg: file not found"):
        load_image(tmp_path / "nope.jpg")


def test_empty_file(tmp_path: Path) -> None:
    (tmp_path / "e.jpg").write_bytes(b"")
    with pytest.raises(UserError, match=r"e\.jpg: empty file"):
        load_image(tmp_path / "e.jpg")


def test_not_an_image(tmp_path: Path) -> None:
    (tmp_path / "photo.jpg").write_text("hello, I am text")
    with pytest.raises(UserError, match=r"photo\.jpg: not an image file \(cannot identify image format\)"):
        load_image(tmp_path / "photo.jpg")


def test_folder_is_not_an_image(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="is a folder"):
        load_image(tmp_path)


@pytest.mark.parametrize("suffix", [".jpg", ".png"])
def test_truncated_image(tmp_path: Path, suffix: str) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG" if suffix == ".jpg" else "PNG")
    data = buf.getvalue()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError) as e:
        load_image(path)
    msg = str(e.value)
    assert msg.startswith(f"{path}: truncated image") and "\n" not in msg


def test_decompression_bomb_limit(tmp_path: Path) -> None:
    Image.new("L", (100, 100)).save(tmp_path / "big.png")
    assert load_image(tmp_path / "big.png", max_pixels=10_000).size == (100, 100)
    with pytest.raises(UserError, match=r"big\.png: image is 100x100 .*over the limit"):
        load_image(tmp_path / "big.png", max_pixels=9_999)
    assert DEFAULT_MAX_PIXELS >= 50_000_000  # phone photos pass by default


def test_verify_images_skips_broken(tmp_path: Path) -> None:
    good = _png(tmp_path / "good.png")
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"junk")
    recs = [ImageRecord(good, 1.0), ImageRecord(bad, 2.0)]
    ok, skipped = verify_images(recs, on_error="skip")
    assert [r.path for r in ok] == [good]
    assert len(skipped) == 1 and skipped[0].where == str(bad) and "not an image" in skipped[0].reason
    with pytest.raises(UserError, match="bad.png: not an image"):
        verify_images(recs)


# --------------------------------------------------------------- csv layout


def _csv_dataset(tmp_path: Path, split: bool) -> Path:
    for i in range(10):
        _png(tmp_path / "img" / f"{i}.png", (i, i, i))
    header = "path,age,gender" + (",split" if split else "")
    splits = ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    lines = [f"img/{i}.png,{20 + i},{'mf'[i % 2]}" + (f",{splits[i]}" if split else "") for i in range(10)]
    return _write_csv(tmp_path / "labels.csv", "\n".join([header, *lines]))


def test_csv_with_split_column(tmp_path: Path) -> None:
    csv_path = _csv_dataset(tmp_path, split=True)
    table = load_image_table(csv_path, "age")
    assert table.task == "regression" and table.layout == "csv" and table.classes == ()
    assert len(table) == 10
    assert [r.split for r in table.records] == ["train"] * 6 + ["val"] * 2 + ["test"] * 2
    assert table.records[3].target == 23.0 and table.records[3].path == tmp_path / "img" / "3.png"
    assert table.targets().dtype == np.float32
    assert len(table.split("val")) == 2


def test_csv_folder_with_labels_csv_and_seeded_split(tmp_path: Path) -> None:
    _csv_dataset(tmp_path, split=False)
    assert detect_format(tmp_path) == "csv"
    t1 = load_image_table(tmp_path, "age", seed=3)
    t2 = load_image_table(tmp_path, "age", seed=3)
    assert [r.split for r in t1.records] == [r.split for r in t2.records]
    counts = t1.summary()["splits"]
    assert counts == {"train": 8, "val": 1, "test": 1, "unsplit": 0}


def test_csv_text_column_is_classification(tmp_path: Path) -> None:
    _csv_dataset(tmp_path, split=True)
    table = load_image_table(tmp_path, "gender")
    assert table.task == "classification" and table.classes == ("f", "m")
    assert table.targets().tolist() == [1, 0] * 5


def test_csv_forced_classification_orders_numeric_classes(tmp_path: Path) -> None:
    for name in "abc":
        _png(tmp_path / f"{name}.png")
    _write_csv(tmp_path / "labels.csv", "path,grade\na.png,10\nb.png,2\nc.png,1")
    table = load_image_table(tmp_path, "grade", task="classification")
    assert table.task == "classification" and table.classes == ("1", "2", "10")


def test_csv_target_defaults_to_only_column_and_bom(tmp_path: Path) -> None:
    _png(tmp_path / "a.png")
    (tmp_path / "labels.csv").write_bytes("\ufeffpath,temperature\na.png,3.5\n".encode())
    table = read_csv_table(tmp_path)
    assert table.target == "temperature" and table.records[0].target == 3.5


def test_csv_missing_columns(tmp_path: Path) -> None:
    _write_csv(tmp_path / "x.csv", "file,age\na.png,3")
    with pytest.raises(UserError, match=r"x\.csv: no 'path' column"):
        read_csv_table(tmp_path / "x.csv", "age")
    _write_csv(tmp_path / "y.csv", "path,age\na.png,3")
    with pytest.raises(UserError, match=r"y\.csv: no column 'weight'"):
        read_csv_table(tmp_path / "y.csv", "weight")


def _bad_rows_csv(tmp_path: Path) -> Path:
    for i in range(6):
        _png(tmp_path / f"{i}.png")
    return _write_csv(
        tmp_path / "labels.csv",
        "\n".join(
            [
                "path,age,split",
                "0.png,30,train",  # line 2: fine
                "gone.png,31,train",  # line 3: missing file
                "1.png,old,train",  # line 4: non-numeric
                "2.png,nan,train",  # line 5: NaN
                "3.png,,train",  # line 6: empty
                "4.png,33,holdout",  # line 7: unknown split
                "5.png,34,",  # line 8: fine, no split
            ]
        ),
    )


@pytest.mark.parametrize(
    ("line", "problem"),
    [
        (3, "file not found: gone.png"),
        (4, "'age' value 'old' is not a number"),
        (5, "'age' value 'nan' is NaN"),
        (6, "empty 'age'"),
        (7, "split 'holdout' is not one of train, val, test"),
    ],
)
def test_bad_row_raises_with_file_and_line(tmp_path: Path, line: int, problem: str) -> None:
    csv_path = _bad_rows_csv(tmp_path)
    lines = csv_path.read_text().splitlines()
    # Keep the header, the good row and bad rows from `line` on: the first bad row is the one named.
    _write_csv(csv_path, "\n".join(lines[:2] + lines[line - 1 :]))
    with pytest.raises(UserError) as e:
        read_csv_table(csv_path, "age")
    assert str(e.value) == f"{csv_path}: line 3: {problem}"


def test_bad_rows_skipped_with_count_and_reasons(tmp_path: Path) -> None:
    csv_path = _bad_rows_csv(tmp_path)
    table = load_image_table(csv_path, "age", on_error="skip")
    assert [r.target for r in table.records] == [30.0, 34.0]
    assert table.summary()["n_skipped"] == 5
    assert [s.where for s in table.skipped] == [f"{csv_path}: line {n}" for n in (3, 4, 5, 6, 7)]
    assert "not a number" in table.skipped[1].reason
    assert str(table.skipped[0]) == f"{csv_path}: line 3: file not found: gone.png"


def test_mostly_numeric_column_is_regression_with_bad_rows(tmp_path: Path) -> None:
    for name in "abc":
        _png(tmp_path / f"{name}.png")
    _write_csv(tmp_path / "labels.csv", "path,age\na.png,30\nb.png,31\nc.png,thirty")
    with pytest.raises(UserError, match=r"line 4: 'age' value 'thirty' is not a number"):
        read_csv_table(tmp_path, "age")


def test_all_rows_bad_is_an_error_even_when_skipping(tmp_path: Path) -> None:
    _write_csv(tmp_path / "labels.csv", "path,age\ngone.png,30")
    with pytest.raises(UserError, match=r"no usable images \(1 skipped; first problem: .*gone\.png"):
        read_csv_table(tmp_path, "age", on_error="skip")


def test_csv_path_listed_twice_is_a_bad_row(tmp_path: Path) -> None:
    for name in "abc":
        _png(tmp_path / "img" / f"{name}.png")
    rows = ["img/a.png,1", "img/b.png,2", "img/a.png,1.0", "img/../img/b.png,9", "img/c.png,3"]
    csv_path = _write_csv(tmp_path / "t.csv", "\n".join(["path,t", *rows]))
    with pytest.raises(UserError) as e:
        load_image_table(csv_path, "t")
    assert str(e.value) == f"{csv_path}: line 4: img/a.png is listed twice (lines 2 and 4)"
    table = load_image_table(csv_path, "t", on_error="skip")
    assert [(r.path.name, r.target) for r in table.records] == [("a.png", 1.0), ("b.png", 2.0), ("c.png", 3.0)]
    assert [str(s) for s in table.skipped] == [
        f"{csv_path}: line 4: img/a.png is listed twice (lines 2 and 4)",
        f"{csv_path}: line 5: img/../img/b.png is listed twice (lines 3 and 5; line 3 writes it 'img/b.png') "
        "with different 't': '2' and '9'",
    ]


@pytest.mark.parametrize(("sep", "said"), [(";", "';'"), ("\t", "tabs")])
def test_csv_with_another_delimiter(tmp_path: Path, sep: str, said: str) -> None:
    _png(tmp_path / "a.png")
    csv_path = _write_csv(tmp_path / "t.csv", f"path{sep}temperature\na.png{sep}1,5")
    with pytest.raises(UserError) as e:
        read_csv_table(csv_path, "temperature")
    assert str(e.value) == f"{csv_path}: fields are separated by {said}; supemb reads comma-separated files " \
        "(save it as CSV with commas)"
    assert "\t" not in str(e.value)
    (tmp_path / "t.tsv").write_text("path\ttemperature\na.png\t1\n")
    with pytest.raises(UserError, match=r"t\.tsv: a tab-separated file; supemb reads comma-separated"):
        load_image_table(tmp_path / "t.tsv")


# ------------------------------------------------------------ folder layout


def test_folder_per_class(tmp_path: Path) -> None:
    for cls, n in (("cat", 3), ("dog", 2)):
        for i in range(n):
            _png(tmp_path / cls / f"{i}.png")
    _png(tmp_path / "dog" / "nested" / "deep.jpg")
    (tmp_path / "dog" / "notes.txt").write_text("not an image")
    _png(tmp_path / "cat" / ".hidden.png")
    (tmp_path / "empty").mkdir()
    assert detect_format(tmp_path) == "folder"
    table = load_image_table(tmp_path)
    assert table.task == "classification" and table.layout == "folder"
    assert table.classes == ("cat", "dog")
    assert sorted(table.targets().tolist()) == [0, 0, 0, 1, 1, 1]
    assert all(r.split is not None for r in table.records)


def test_folder_with_split_folders(tmp_path: Path) -> None:
    _png(tmp_path / "train" / "a" / "1.png")
    _png(tmp_path / "train" / "b" / "1.png")
    _png(tmp_path / "val" / "a" / "2.png")
    table = read_folder_table(tmp_path)
    assert table.classes == ("a", "b")
    assert sorted((r.split, r.target) for r in table.records) == [("train", "a"), ("train", "b"), ("val", "a")]


def test_folder_without_classes(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="no images in class sub-folders"):
        read_folder_table(tmp_path)
    _png(tmp_path / "loose.png")
    with pytest.raises(UserError, match=r"<image>; 1 image\(s\) not inside a class folder\)$"):
        read_folder_table(tmp_path)


def test_folder_has_one_target_class(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "1.png")
    assert read_folder_table(tmp_path, "class").target == "class"
    with pytest.raises(UserError) as e:
        load_image_table(tmp_path, "age", task="classification")
    assert str(e.value) == f"{tmp_path}: a folder-per-class dataset has one target, 'class' " \
        "(its sub-folders' names), not 'age'"


@pytest.mark.parametrize(("layout", "label", "names"), [
    ("utkface", "UTKFace", ["25_0_2_20170116174525125.jpg.chip.jpg", "61_1_0_20170109142408075.jpg"]),
    ("agedb", "AgeDB", ["0_MariaCallas_35_f.jpg", "1_J.R.R.Tolkien_50_m.jpg"]),
])
def test_named_files_in_part_folders_point_to_format(tmp_path: Path, layout: str, label: str, names: list[str]) -> None:
    for k, name in enumerate(names):  # UTKFace as distributed: part1/ part2/ ...
        _png(tmp_path / f"part{k + 1}" / name)
    hint = f"; its file names look like {label}'s: pass --format {layout}"
    assert detect_format(tmp_path) == "folder"
    for task in ("auto", "classification", "regression"):  # --target age with rnc, or following --loss supcon
        with pytest.raises(UserError, match=r"not 'age'" + hint.replace(".", r"\.") + "$"):
            load_image_table(tmp_path, "age", task=task)
    # the one reader serves train, export, index and eval: no flag that only one of them has (index has no --loss)
    with pytest.raises(UserError, match=r"holds classes, not values: a bundle of values, or a run of rnc .*"
                                        r"train on it with --loss supcon, tsc or ce" + hint + "$"):
        load_image_table(tmp_path, "class", task="regression")
    assert sorted(r.target for r in load_image_table(tmp_path, "age", format=layout).records) == [35.0, 50.0] \
        if layout == "agedb" else [25.0, 61.0]


def test_stray_folder_beside_split_folders_is_refused(tmp_path: Path) -> None:
    for folder in ("train", "val", "test", "unsorted"):
        _png(tmp_path / folder / "a" / "1.png")
    with pytest.raises(UserError) as e:
        load_image_table(tmp_path)
    assert str(e.value) == f"{tmp_path}: unsorted/ is beside train/ val/ test/: a split layout holds only those; " \
        "move it out"
    _png(tmp_path / "misc" / "a" / "2.png")
    with pytest.raises(UserError, match=r": misc/ and unsorted/ are beside train/ val/ test/: .*move them out$"):
        load_image_table(tmp_path)


def test_images_beside_class_folders_are_listed_not_used(tmp_path: Path) -> None:
    _png(tmp_path / "cat" / "1.png")
    _png(tmp_path / "dog" / "1.png")
    stray = _png(tmp_path / "stray.png")
    table = load_image_table(tmp_path)  # on_error="raise": not an error
    assert len(table) == 2 and table.summary()["n_skipped"] == 1
    assert table.summary()["skipped"] == [f"{stray}: not inside a class folder"]
    split_root = tmp_path / "splits"
    _png(split_root / "train" / "a" / "1.png")
    _png(split_root / "val" / "a" / "2.png")
    loose = [_png(split_root / "top.png"), _png(split_root / "train" / "loose.png")]
    table = read_folder_table(split_root)
    assert len(table) == 2 and [s.where for s in table.skipped] == [str(p) for p in loose]


# ------------------------------------------------------- named conventions


def test_utkface(tmp_path: Path) -> None:
    _png(tmp_path / "25_0_2_20170116174525125.jpg.chip.jpg")
    _png(tmp_path / "61_1_0_20170109142408075.jpg")
    _png(tmp_path / "3_1_4_20161219140623097.jpg")
    assert detect_format(tmp_path) == "utkface"
    ages = load_image_table(tmp_path, format="utkface")
    assert ages.task == "regression" and ages.target == "age"
    assert sorted(r.target for r in ages.records) == [3.0, 25.0, 61.0]
    gender = read_utkface_table(tmp_path, "gender")
    assert gender.task == "classification" and gender.classes == ("female", "male")
    race = read_utkface_table(tmp_path, "race")
    assert {r.path.name.split("_")[0]: r.target for r in race.records} == {"25": "asian", "61": "white", "3": "other"}


def test_utkface_bad_names(tmp_path: Path) -> None:
    _png(tmp_path / "25_0_2_20170116174525125.jpg")
    bad = _png(tmp_path / "39_1_20170116174525125.jpg")  # the real data set has such names
    with pytest.raises(UserError, match=r"39_1_20170116174525125\.jpg: file name does not follow the utkface"):
        read_utkface_table(tmp_path)
    table = read_utkface_table(tmp_path, on_error="skip")
    assert len(table) == 1 and table.skipped[0].where == str(bad)
    with pytest.raises(UserError, match="utkface targets are age, gender, race"):
        read_utkface_table(tmp_path, "name")


def test_agedb(tmp_path: Path) -> None:
    _png(tmp_path / "0_MariaCallas_35_f.jpg")
    _png(tmp_path / "1_Jean_Paul_Sartre_60_m.jpg")  # underscores inside the name
    _png(tmp_path / "2_MariaCallas_50_f.jpg")
    assert detect_format(tmp_path) == "agedb"
    table = load_image_table(tmp_path, "age", format="agedb")
    assert sorted(r.target for r in table.records) == [35.0, 50.0, 60.0]
    names = read_agedb_table(tmp_path, "name")
    assert names.classes == ("Jean_Paul_Sartre", "MariaCallas")
    assert read_agedb_table(tmp_path, "gender").classes == ("female", "male")


def test_agedb_names_with_dots(tmp_path: Path) -> None:
    assert parse_agedb("1_J.R.R.Tolkien_50_m.jpg") == {"age": "50", "gender": "male", "name": "J.R.R.Tolkien"}
    assert parse_agedb("2_Dr. Who_40_m.jpg") == {"age": "40", "gender": "male", "name": "Dr. Who"}
    assert parse_utkface("25_0_2_20170116174525125.jpg.chip.jpg") == {"age": "25", "gender": "male", "race": "asian"}
    _png(tmp_path / "1_J.R.R.Tolkien_50_m.jpg")
    _png(tmp_path / "2_Dr. Who_40_m.jpg")
    assert detect_format(tmp_path) == "agedb"
    assert read_agedb_table(tmp_path, "name").classes == ("Dr. Who", "J.R.R.Tolkien")


def test_agedb_bad_name_skipped(tmp_path: Path) -> None:
    _png(tmp_path / "0_MariaCallas_35_f.jpg")
    _png(tmp_path / "MariaCallas_x.jpg")
    table = read_agedb_table(tmp_path, on_error="skip")
    assert len(table) == 1 and len(table.skipped) == 1


def test_unknown_layout_and_format(tmp_path: Path) -> None:
    _png(tmp_path / "holiday.png")
    with pytest.raises(UserError, match="cannot tell the dataset layout"):
        load_image_table(tmp_path)
    with pytest.raises(UserError, match="unknown format 'coco'"):
        load_image_table(tmp_path, format="coco")
    with pytest.raises(UserError, match="no such file or folder"):
        load_image_table(tmp_path / "missing")


# ------------------------------------------------------------------- splits


def test_split_labels_counts_and_determinism() -> None:
    a = split_labels(100, val_frac=0.1, test_frac=0.2, seed=7)
    assert (a.count("train"), a.count("val"), a.count("test")) == (70, 10, 20)
    assert a == split_labels(100, val_frac=0.1, test_frac=0.2, seed=7)
    assert a != split_labels(100, val_frac=0.1, test_frac=0.2, seed=8)
    assert split_labels(1, seed=0) == ["train"]  # tiny data keeps a training item
    with pytest.raises(UserError, match="sum to < 1"):
        split_labels(10, val_frac=0.5, test_frac=0.5)


def test_assign_splits_is_disjoint_order_independent_and_keeps_given() -> None:
    recs = [ImageRecord(Path(f"{i:03d}.png"), float(i)) for i in range(200)]
    recs[5] = ImageRecord(recs[5].path, 5.0, "test")
    out = assign_splits(recs, seed=1)
    assert out[5].split == "test"
    by_split = {s: {r.path for r in out if r.split == s} for s in ("train", "val", "test")}
    assert sum(len(v) for v in by_split.values()) == 200  # every record in exactly one split
    assert not (by_split["train"] & by_split["val"]) and not (by_split["val"] & by_split["test"])
    shuffled = assign_splits(list(reversed(recs)), seed=1)
    assert {r.path: r.split for r in shuffled} == {r.path: r.split for r in out}


def test_stratified_split_reaches_every_class() -> None:
    recs = [ImageRecord(Path(f"{i}.png"), "rare" if i < 10 else "common") for i in range(100)]
    out = assign_splits(recs, seed=0, stratify=True)
    rare = [r.split for r in out if r.target == "rare"]
    assert rare.count("val") == 1 and rare.count("test") == 1


# ------------------------------------------------------------ table targets


def test_table_split_targets_regression_and_classification(tmp_path: Path) -> None:
    for i in range(6):
        _png(tmp_path / f"{i}.png", (i * 40, 0, 0), size=(5, 3))
    lines = "\n".join(f"{i}.png,{i * 1.5},{'ab'[i % 2]},{(['train'] * 4 + ['test', 'val'])[i]}" for i in range(6))
    _write_csv(tmp_path / "labels.csv", "path,value,kind,split\n" + lines)

    reg = load_image_table(tmp_path, "value")
    train = reg.split("train")
    assert [r.path.name for r in train] == ["0.png", "1.png", "2.png", "3.png"]
    y = reg.targets(train)
    assert y.dtype == np.float32 and y.tolist() == pytest.approx([0.0, 1.5, 3.0, 4.5])
    assert np.asarray(load_image(train[2].path))[0, 0].tolist() == [80, 0, 0]
    cls = load_image_table(tmp_path, "kind")
    assert cls.task == "classification" and cls.classes == ("a", "b")
    assert cls.targets(cls.split("train")).dtype == np.int64
    assert cls.targets(cls.split("train")).tolist() == [0, 1, 0, 1]
    assert cls.targets(cls.split("test")).tolist() == [0] and cls.encode("b") == 1
    with pytest.raises(ValueError):
        cls.split("holdout")


def test_load_image_names_a_broken_file(tmp_path: Path) -> None:
    (tmp_path / "x.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(UserError, match=r"x\.png: "):
        load_image(tmp_path / "x.png")


def test_table_rejects_unknown_classes() -> None:
    with pytest.raises(ValueError):
        ImageTable((ImageRecord(Path("a"), "x"),), "t", "classification", classes=("y",))
    assert math.isclose(ImageTable((ImageRecord(Path("a"), 2.5),), "t", "regression").encode(2.5), 2.5)


def test_upsampling_notice_names_the_largest_size_and_the_flag(tmp_path: Path) -> None:
    from supemb.modalities.image import upsampling_notice

    paths = [str(_png(tmp_path / "a.png", size=(20, 12))), str(_png(tmp_path / "b.png", size=(16, 24)))]
    note = upsampling_notice(paths, 48)
    assert note is not None
    assert "at most 20x24 px" in note and "--image-size 48 upsamples" in note and "--image-size 24 trains" in note
    assert "4x the pixels" in note  # (48 / 24) ** 2
    assert upsampling_notice(paths, 24) is None  # one image is as large as the input size
    assert upsampling_notice(paths[:1], 24) is not None  # a 20x12 image alone is smaller
    assert upsampling_notice([], 48) is None
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"not an image")
    assert upsampling_notice([str(bad), *paths], 48) is None  # the loader, not this notice, reports it
    assert upsampling_notice([str(tmp_path / "a.png")] * 16 + [str(_png(tmp_path / "c.png", size=(64, 64)))], 48) \
        is not None  # only the first 16 are read
