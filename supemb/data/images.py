"""Image files -> RGB images, and image datasets -> labelled records.

Decoding (`load_image`) is shared by training and serving. It applies the
EXIF orientation, turns every pixel format (greyscale, palette, alpha,
16-bit, CMYK, ...) into 8-bit RGB, refuses images over a pixel limit
(decompression bombs), and reports every unreadable file as one
`UserError` line naming the file.

Dataset layouts (`load_image_table`, see docs/DESIGN.md, "Data layouts"):

- "csv": a CSV, or a folder holding `labels.csv`, with a `path` column
  (relative to the CSV), one column per target and an optional `split`
  column (train/val/test).
- "folder": one sub-folder per class (optionally under train/val/test).
- "utkface": `{age}_{gender}_{race}_{date}.jpg` file names.
- "agedb": `{id}_{name}_{age}_{gender}.jpg` file names.

Every layout becomes an `ImageTable` of `ImageRecord`s; bad rows either
raise (one line: file, line, problem) or are skipped and listed. Records
without a split get a seeded one (`assign_splits`).

torch is imported only where a tensor is made, so serving can decode images
without paying for the torch import (about 2 s).
"""

from __future__ import annotations

import csv
import math
import re
import struct
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from supemb.errors import UserError

IMAGE_SUFFIXES: tuple[str, ...] = (
    ".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
)  # fmt: skip
SPLITS: tuple[str, ...] = ("train", "val", "test")
FORMATS: tuple[str, ...] = ("auto", "csv", "folder", "utkface", "agedb")
TASKS: tuple[str, ...] = ("auto", "regression", "classification")
ON_ERROR: tuple[str, ...] = ("raise", "skip")
# A 64 MP photo is plausible (phone cameras reach 50 MP); a 64k x 64k PNG of
# a few kB is an attack that would allocate 12 GB.
DEFAULT_MAX_PIXELS = 64_000_000

Task = Literal["regression", "classification"]

# UTKFace's documented codes.
UTKFACE_GENDERS: tuple[str, ...] = ("male", "female")
UTKFACE_RACES: tuple[str, ...] = ("white", "black", "asian", "indian", "other")
AGEDB_GENDERS: dict[str, str] = {"m": "male", "f": "female"}

# ------------------------------------------------------------------ decoding


def load_image(path: str | Path, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode an image file into an 8-bit RGB `PIL.Image`, upright.

    EXIF orientation is applied; see `to_rgb` for the pixel formats.
    max_pixels: refuse images with more pixels than this (None: no limit of
    our own; Pillow's global `Image.MAX_IMAGE_PIXELS` guard still applies).
    Raises UserError with one line "<path>: <problem>" for a missing, empty,
    non-image, truncated, corrupt or oversized file.
    """
    path = Path(path)
    try:
        if path.is_dir():
            raise UserError(f"{path}: is a folder, not an image file")
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"{path}: file not found") from None
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror or e})") from None
    if size == 0:
        raise UserError(f"{path}: empty file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            # Checked on the header, before any pixel is decoded.
            if max_pixels is not None and w * h > max_pixels:
                raise UserError(
                    f"{path}: image is {w}x{h} ({w * h / 1e6:.1f} MP), over the limit of "
                    f"{max_pixels / 1e6:g} MP (decompression-bomb guard; raise max_pixels "
                    "if you trust the file)"
                )
            im.load()
            return to_rgb(_upright(im))
    except UserError:
        raise
    except UnidentifiedImageError:
        raise UserError(f"{path}: not an image file (cannot identify image format)") from None
    except PermissionError:
        raise UserError(f"{path}: cannot read (permission denied)") from None
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: too many pixels ({_one_line(e)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error) as e:
        msg = _one_line(e)
        if isinstance(e, EOFError) or "truncated" in msg.lower():
            raise UserError(f"{path}: truncated image (the file ends before the pixel data does)") from None
        raise UserError(f"{path}: corrupt image ({msg or type(e).__name__})") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _upright(im: Image.Image) -> Image.Image:
    """A copy of `im` with its EXIF orientation applied (the file can be closed after)."""
    try:
        out = ImageOps.exif_transpose(im)
    except (OSError, ValueError, SyntaxError, KeyError, TypeError, struct.error):
        # Broken EXIF metadata must not make good pixels unreadable.
        out = None
    return out if out is not None else im.copy()


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow image -> 8-bit "RGB" (the same object when it already is).

    - alpha ("RGBA", "LA", "PA", palette/colour-key transparency): composited
      on white, the usual background of product and face crops;
    - 16-bit greyscale ("I;16*"): scaled by 255/65535;
    - 32-bit integer ("I"): taken as 8-bit when all values lie in [0, 255],
      else as 16-bit (what PNG/TIFF decoders put there);
    - float ("F"): taken as [0, 1] when the maximum is <= 1, else [0, 255];
    - everything else ("L", "1", "P", "CMYK", "YCbCr", ...): Pillow's convert.
    """
    mode = img.mode
    if mode == "RGB":
        return img
    if mode.startswith("I;16"):
        a = np.asarray(img).astype(np.float32) * (255.0 / 65535.0)
        return _grey_to_rgb(a)
    if mode == "I":
        a = np.asarray(img).astype(np.float64)
        if a.size and (a.min() < 0 or a.max() > 255):
            a = np.clip(a, 0, 65535) * (255.0 / 65535.0)
        return _grey_to_rgb(a)
    if mode == "F":
        a = np.nan_to_num(np.asarray(img).astype(np.float64), nan=0.0, posinf=255.0, neginf=0.0)
        if a.size and a.max() <= 1.0:
            a = a * 255.0
        return _grey_to_rgb(a)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_rgb(a: np.ndarray) -> Image.Image:
    g = np.clip(np.rint(a), 0, 255).astype(np.uint8)
    return Image.fromarray(np.repeat(g[:, :, None], 3, axis=2), "RGB")


def is_image_file(path: Path) -> bool:
    """By suffix, case-insensitive; hidden files (".name", macOS "._name") are not images."""
    return path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


# ------------------------------------------------------------------- tables


@dataclass(frozen=True)
class ImageRecord:
    """One labelled image.

    target: a float for regression, the class name (str) for classification.
    split: "train" / "val" / "test", or None until `assign_splits` draws one.
    """

    path: Path
    target: float | str
    split: str | None = None


@dataclass(frozen=True)
class SkippedRow:
    """A row (or file) left out with on_error="skip". where: "<csv>: line N" or a file path."""

    where: str
    reason: str

    def __str__(self) -> str:
        return f"{self.where}: {self.reason}"


@dataclass(frozen=True)
class ImageTable:
    """The labelled images of one dataset.

    task: "regression" (targets are floats) or "classification" (targets are
    class names, `classes` lists them sorted; a class index is a position in
    `classes`). skipped: the rows left out with on_error="skip".
    """

    records: tuple[ImageRecord, ...]
    target: str
    task: Task
    classes: tuple[str, ...] = ()
    layout: str = "csv"
    source: Path | None = None
    skipped: tuple[SkippedRow, ...] = ()

    def __post_init__(self) -> None:
        if self.task not in ("regression", "classification"):
            raise ValueError(f"task must be 'regression' or 'classification', not {self.task!r}")
        if self.task == "classification":
            known = set(self.classes)
            missing = {r.target for r in self.records} - known
            if missing:
                raise ValueError(f"targets not in classes: {sorted(map(str, missing))[:5]}")
        elif self.classes:
            raise ValueError("a regression table has no classes")

    def __len__(self) -> int:
        return len(self.records)

    def split(self, name: str) -> tuple[ImageRecord, ...]:
        """The records of split `name` ("train", "val" or "test")."""
        if name not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, not {name!r}")
        return tuple(r for r in self.records if r.split == name)

    def encode(self, target: float | str) -> float | int:
        """A record's target as a model sees it: the float, or the class index."""
        if self.task == "regression":
            return float(target)
        return self.classes.index(str(target))

    def targets(self, records: Sequence[ImageRecord] | None = None) -> np.ndarray:
        """Targets [N]: float32 for regression, int64 class indices for classification."""
        recs = self.records if records is None else records
        if self.task == "regression":
            return np.array([float(r.target) for r in recs], dtype=np.float32)
        index = {c: i for i, c in enumerate(self.classes)}
        return np.array([index[str(r.target)] for r in recs], dtype=np.int64)

    def with_splits(
        self, *, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0, stratify: bool | None = None
    ) -> ImageTable:
        """Draw a split for every record that has none (see `assign_splits`).

        stratify: per class; None means "when the task is classification".
        """
        strat = self.task == "classification" if stratify is None else stratify
        recs = assign_splits(self.records, val_frac=val_frac, test_frac=test_frac, seed=seed, stratify=strat)
        return replace(self, records=tuple(recs))

    def summary(self) -> dict[str, Any]:
        """JSON-friendly counts for logs and the training run."""
        counts = {s: sum(r.split == s for r in self.records) for s in SPLITS}
        counts["unsplit"] = sum(r.split is None for r in self.records)
        return {
            "source": str(self.source) if self.source is not None else None,
            "layout": self.layout,
            "target": self.target,
            "task": self.task,
            "classes": list(self.classes),
            "n_records": len(self.records),
            "splits": counts,
            "n_skipped": len(self.skipped),
        }


@dataclass(frozen=True)
class _RawRow:
    """A row before its target is typed: target is the text from the CSV or file name."""

    where: str
    path: Path
    target: str
    split: str | None
    problem: str | None = None  # found while reading; reported in row order by _make_table


class _Problems:
    """Collects bad rows: raises on the first with on_error="raise"."""

    def __init__(self, on_error: str) -> None:
        if on_error not in ON_ERROR:
            raise ValueError(f"on_error must be one of {ON_ERROR}, not {on_error!r}")
        self.raise_ = on_error == "raise"
        self.skipped: list[SkippedRow] = []

    def bad(self, where: str, reason: str) -> None:
        if self.raise_:
            raise UserError(f"{where}: {reason}")
        self.skipped.append(SkippedRow(where, reason))


def load_image_table(
    data: str | Path,
    target: str | None = None,
    *,
    format: str = "auto",
    task: str = "auto",
    on_error: str = "raise",
    seed: int = 0,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    stratify: bool | None = None,
) -> ImageTable:
    """What `--data PATH --target COLUMN [--format F] [--task T]` means for images.

    format: "csv" | "folder" | "utkface" | "agedb" | "auto" (`detect_format`).
    target: the CSV column; "class" for folders; "age" (default), "gender" or
    "race" for UTKFace; "age" (default), "gender" or "name" for AgeDB.
    task: "auto" (regression when the target is numeric), "regression" or
    "classification". on_error: "raise" on the first bad row, or "skip" bad
    rows (listed in `table.skipped`). Records without a split get a seeded
    one: val_frac / test_frac of them, deterministic for `seed`.
    """
    if format not in FORMATS:
        raise UserError(f"unknown format {format!r}: use one of {', '.join(FORMATS)}")
    data = Path(data)
    fmt = detect_format(data) if format == "auto" else format
    readers: dict[str, Callable[..., ImageTable]] = {
        "csv": read_csv_table,
        "folder": read_folder_table,
        "utkface": read_utkface_table,
        "agedb": read_agedb_table,
    }
    table = readers[fmt](data, target, task=task, on_error=on_error)
    return table.with_splits(val_frac=val_frac, test_frac=test_frac, seed=seed, stratify=stratify)


def detect_format(data: Path) -> str:
    """"csv" for a .csv file or a folder with labels.csv; "folder" for a folder of
    class sub-folders; "utkface"/"agedb" for a flat folder where at least 90% of
    the image names follow that convention."""
    if data.is_file():
        if data.suffix.lower() == ".csv":
            return "csv"
        raise UserError(f"{data}: not a CSV file or a folder of images")
    if not data.is_dir():
        raise UserError(f"{data}: no such file or folder")
    if (data / "labels.csv").is_file():
        return "csv"
    if _class_dirs(data):
        return "folder"
    names = [p.name for p in sorted(data.iterdir()) if p.is_file() and is_image_file(p)]
    # Most, not all: the real UTKFace has a few misnamed files, which then
    # surface as bad rows naming the file.
    for name, parse in (("utkface", _parse_utkface), ("agedb", _parse_agedb)):
        if names and sum(parse(n) is not None for n in names) >= 0.9 * len(names):
            return name
    raise UserError(
        f"{data}: cannot tell the dataset layout (no labels.csv, no class sub-folders, "
        "no UTKFace/AgeDB file names); pass the format explicitly"
    )


# ---------------------------------------------------------------------- csv


def read_csv_table(
    data: str | Path, target: str | None = None, *, task: str = "auto", on_error: str = "raise"
) -> ImageTable:
    """Records from a CSV (or a folder's labels.csv): `path` (relative to the CSV),
    the `target` column, an optional `split` column. Splits left empty stay None.

    target None picks the only column besides path/split, if there is one.
    Bad rows (file not found, empty / NaN / non-numeric regression target,
    unknown split) raise "<csv>: line N: <problem>" or are skipped.
    """
    data = Path(data)
    csv_path = data / "labels.csv" if data.is_dir() else data
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:  # -sig: Excel's BOM
            reader = csv.reader(f)
            header = [h.strip() for h in next(reader, [])]
            lines = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        raise UserError(f"{csv_path}: file not found") from None
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise UserError(f"{csv_path}: cannot read as a UTF-8 CSV ({_one_line(e)})") from None
    if "path" not in header:
        raise UserError(f"{csv_path}: no 'path' column (columns: {', '.join(header) or 'none'})")
    if target is None:
        candidates = [h for h in header if h not in ("path", "split") and h]
        if len(candidates) != 1:
            raise UserError(f"{csv_path}: name the target column (one of: {', '.join(candidates) or 'none'})")
        target = candidates[0]
    if target not in header:
        raise UserError(f"{csv_path}: no column {target!r} (columns: {', '.join(header)})")
    i_path, i_target = header.index("path"), header.index(target)
    i_split = header.index("split") if "split" in header else None

    rows: list[_RawRow] = []
    for line, row in lines:
        if not any(c.strip() for c in row):
            continue  # blank lines are layout, not data
        where = f"{csv_path}: line {line}"
        cells = row + [""] * (len(header) - len(row))
        p, t = cells[i_path].strip(), cells[i_target].strip()
        sp = cells[i_split].strip().lower() if i_split is not None else ""
        full = Path(p) if Path(p).is_absolute() else csv_path.parent / p
        problem = None
        if not p:
            problem = "empty 'path'"
        elif not full.is_file():
            problem = f"file not found: {p}"
        elif sp and sp not in SPLITS:
            problem = f"split {cells[i_split].strip()!r} is not one of {', '.join(SPLITS)}"
        rows.append(_RawRow(where, full, t, sp or None, problem))
    return _make_table(rows, target, task, _Problems(on_error), layout="csv", source=csv_path)


def _make_table(
    rows: Sequence[_RawRow], target: str, task: str, problems: _Problems, *, layout: str, source: Path
) -> ImageTable:
    """Type the targets: floats for regression, class names for classification."""
    if task not in TASKS:
        raise UserError(f"unknown task {task!r}: use one of {', '.join(TASKS)}")
    if task == "auto":
        filled = [r.target for r in rows if r.target]
        numeric = sum(_parse_number(t) is not None for t in filled)
        # A mostly numeric column is a regression target with a few typos
        # (reported as bad rows), not a classification with 80 classes.
        task = "regression" if filled and numeric * 2 > len(filled) else "classification"
    records: list[ImageRecord] = []
    for r in rows:
        if r.problem is not None:
            problems.bad(r.where, r.problem)
            continue
        if not r.target:
            problems.bad(r.where, f"empty {target!r}")
            continue
        if task == "regression":
            v = _parse_number(r.target)
            if v is None:
                problems.bad(r.where, f"{target!r} value {r.target!r} is not a number")
                continue
            if not math.isfinite(v):
                problems.bad(r.where, f"{target!r} value {r.target!r} is {'NaN' if math.isnan(v) else 'not finite'}")
                continue
            records.append(ImageRecord(r.path, v, r.split))
        else:
            records.append(ImageRecord(r.path, r.target, r.split))
    if not records:
        detail = f"; first problem: {problems.skipped[0]}" if problems.skipped else ""
        raise UserError(f"{source}: no usable images ({len(problems.skipped)} skipped{detail})")
    classes = _sorted_classes({str(r.target) for r in records}) if task == "classification" else ()
    return ImageTable(
        records=tuple(records),
        target=target,
        task=task,  # type: ignore[arg-type]
        classes=classes,
        layout=layout,
        source=source,
        skipped=tuple(problems.skipped),
    )


def _parse_number(s: str) -> float | None:
    """float(s), or None when it is not a number ("nan" and "inf" are numbers here)."""
    try:
        return float(s)
    except ValueError:
        return None


def _sorted_classes(names: set[str]) -> tuple[str, ...]:
    """Numeric class names in numeric order ("2" before "10"), else text order."""
    if all(_parse_number(n) is not None and math.isfinite(float(n)) for n in names):
        return tuple(sorted(names, key=lambda n: (float(n), n)))
    return tuple(sorted(names))


# -------------------------------------------------------------- folder layout


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _images_under(folder: Path) -> list[Path]:
    return sorted(
        p for p in folder.rglob("*")
        if p.is_file() and is_image_file(p) and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )  # fmt: skip


def read_folder_table(
    data: str | Path, target: str | None = None, *, task: str = "classification", on_error: str = "raise"
) -> ImageTable:
    """One sub-folder per class: `root/<class>/**/*.jpg`, or with fixed splits
    `root/<train|val|test>/<class>/**/*.jpg`. target names the label ("class").

    Always classification; empty class folders are ignored.
    """
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    if task == "regression":
        raise UserError(f"{root}: a folder-per-class dataset is a classification task")
    problems = _Problems(on_error)
    subdirs = _class_dirs(root)
    split_layout = bool(subdirs) and {d.name.lower() for d in subdirs} <= set(SPLITS)
    groups = [(d, d.name.lower()) for d in subdirs] if split_layout else [(root, None)]
    rows: list[_RawRow] = []
    for parent, split in groups:
        for class_dir in _class_dirs(parent):
            rows.extend(_RawRow(str(p), p, class_dir.name, split) for p in _images_under(class_dir))
    if not rows:
        raise UserError(f"{root}: no images in class sub-folders (expected {root}/<class>/<image>)")
    return _make_table(rows, target or "class", "classification", problems, layout="folder", source=root)


# ------------------------------------------------------ named file layouts

_UTK_RE = re.compile(r"^(\d{1,3})_(\d)_(\d)_(\d+)$")
_AGEDB_RE = re.compile(r"^(\d+)_(.+)_(\d{1,3})_([mMfF])$")


def _stem(name: str) -> str:
    # UTKFace's aligned crops are named "..._{date}.jpg.chip.jpg": drop every suffix.
    return name.split(".", 1)[0]


def _parse_utkface(name: str) -> dict[str, str] | None:
    m = _UTK_RE.match(_stem(name))
    if m is None:
        return None
    age, gender, race, _ = m.groups()
    if int(gender) >= len(UTKFACE_GENDERS) or int(race) >= len(UTKFACE_RACES):
        return None
    return {"age": age, "gender": UTKFACE_GENDERS[int(gender)], "race": UTKFACE_RACES[int(race)]}


def _parse_agedb(name: str) -> dict[str, str] | None:
    m = _AGEDB_RE.match(_stem(name))
    if m is None:
        return None
    _, person, age, gender = m.groups()
    return {"age": age, "gender": AGEDB_GENDERS[gender.lower()], "name": person}


def _read_named(
    root: Path,
    target: str | None,
    task: str,
    on_error: str,
    *,
    layout: str,
    parse: Callable[[str], dict[str, str] | None],
    targets: tuple[str, ...],
    pattern: str,
) -> ImageTable:
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    target = target or "age"
    if target not in targets:
        raise UserError(f"{layout} targets are {', '.join(targets)}; not {target!r}")
    problems = _Problems(on_error)
    files = _images_under(root)
    if not files:
        raise UserError(f"{root}: no images found")
    rows: list[_RawRow] = []
    for p in files:
        fields = parse(p.name)
        if fields is None:
            rows.append(_RawRow(str(p), p, "", None, f"file name does not follow the {layout} convention {pattern}"))
        else:
            rows.append(_RawRow(str(p), p, fields[target], None))
    return _make_table(rows, target, task, problems, layout=layout, source=root)


def read_utkface_table(
    data: str | Path, target: str | None = None, *, task: str = "auto", on_error: str = "raise"
) -> ImageTable:
    """UTKFace: `{age}_{gender}_{race}_{date}.jpg` (also `.jpg.chip.jpg`), under `data`.

    target: "age" (default, regression), "gender" (male/female) or "race"
    (white/black/asian/indian/other). Names that do not parse are bad rows.
    """
    return _read_named(
        Path(data), target, task, on_error, layout="utkface", parse=_parse_utkface,
        targets=("age", "gender", "race"), pattern="{age}_{gender}_{race}_{date}.jpg",
    )  # fmt: skip


def read_agedb_table(
    data: str | Path, target: str | None = None, *, task: str = "auto", on_error: str = "raise"
) -> ImageTable:
    """AgeDB: `{id}_{name}_{age}_{gender}.jpg` (gender m/f), under `data`.

    target: "age" (default, regression), "gender" or "name" (identity).
    """
    return _read_named(
        Path(data), target, task, on_error, layout="agedb", parse=_parse_agedb,
        targets=("age", "gender", "name"), pattern="{id}_{name}_{age}_{gender}.jpg",
    )  # fmt: skip


# ------------------------------------------------------------------- splits


def split_labels(n: int, *, val_frac: float = 0.1, test_frac: float = 0.1, seed: int = 0) -> list[str]:
    """A seeded split of n items: "train"/"val"/"test" per item.

    round(n * frac) items go to val and to test, keeping at least one train
    item; the same (n, fractions, seed) always gives the same answer.
    """
    if not (0 <= val_frac < 1 and 0 <= test_frac < 1 and val_frac + test_frac < 1):
        raise UserError(f"split fractions val={val_frac}, test={test_frac} must each be in [0, 1) and sum to < 1")
    n_val, n_test = round(n * val_frac), round(n * test_frac)
    while n > 0 and n_val + n_test >= n:  # tiny n: keep one training item
        if n_test >= n_val and n_test > 0:
            n_test -= 1
        else:
            n_val -= 1
    order = np.random.default_rng(seed).permutation(n)
    out = ["train"] * n
    for i in order[:n_val]:
        out[i] = "val"
    for i in order[n_val : n_val + n_test]:
        out[i] = "test"
    return out


def assign_splits(
    records: Sequence[ImageRecord],
    *,
    val_frac: float = 0.1,
    test_frac: float = 0.1,
    seed: int = 0,
    stratify: bool = False,
) -> list[ImageRecord]:
    """Give every record without a split one; records with a split keep it.

    The draw sorts the unsplit records by path first, so it does not depend on
    the order of the list. stratify: split each class (target value) on its
    own, so rare classes reach val and test. Returns records in input order.
    """
    todo = sorted((i for i, r in enumerate(records) if r.split is None), key=lambda i: str(records[i].path))
    if stratify:
        groups: dict[str, list[int]] = {}
        for i in todo:
            groups.setdefault(str(records[i].target), []).append(i)
        parts = [groups[k] for k in sorted(groups)]
    else:
        parts = [todo]
    out = list(records)
    for k, idx in enumerate(parts):
        # One seed stream per group, so adding a class does not reshuffle the others.
        labels = split_labels(len(idx), val_frac=val_frac, test_frac=test_frac, seed=seed + 1_000_003 * k)
        for i, lab in zip(idx, labels):
            out[i] = replace(records[i], split=lab)
    return out


def verify_images(
    records: Sequence[ImageRecord], *, on_error: str = "raise", max_pixels: int | None = DEFAULT_MAX_PIXELS
) -> tuple[list[ImageRecord], list[SkippedRow]]:
    """Decode every image once (catches truncated files before training starts).

    Returns (the records that decode, the ones that did not).
    """
    problems = _Problems(on_error)
    good: list[ImageRecord] = []
    for r in records:
        try:
            load_image(r.path, max_pixels=max_pixels)
        except UserError as e:
            problems.bad(str(r.path), str(e).removeprefix(f"{r.path}: "))
            continue
        good.append(r)
    return good, problems.skipped


# ------------------------------------------------------------------ dataset


class ImageDataset:
    """A map-style torch dataset of labelled images (DataLoader needs only
    `__len__` and `__getitem__`; not subclassing keeps torch out of imports).

    Item i = (transform(load_image(path)), target): x is whatever the
    transform returns (e.g. float32 [3, H, W], or [2, 3, H, W] for two views);
    target is a float32 scalar tensor (regression) or an int64 class index
    into `classes` (classification). Pass the table's `classes` so every
    split shares one class list.
    """

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Any],
        *,
        classes: Sequence[str] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ) -> None:
        self.records = tuple(records)
        self.transform = transform
        self.max_pixels = max_pixels
        is_class = any(isinstance(r.target, str) for r in self.records)
        if is_class:
            self.classes: tuple[str, ...] | None = (
                tuple(classes) if classes is not None else _sorted_classes({str(r.target) for r in self.records})
            )
            index = {c: i for i, c in enumerate(self.classes)}
            missing = {str(r.target) for r in self.records} - index.keys()
            if missing:
                raise ValueError(f"targets not in classes: {sorted(missing)[:5]}")
            self.targets = np.array([index[str(r.target)] for r in self.records], dtype=np.int64)
        else:
            self.classes = None
            self.targets = np.array([float(r.target) for r in self.records], dtype=np.float32)

    @classmethod
    def from_table(
        cls, table: ImageTable, split: str | None, transform: Callable[[Image.Image], Any], **kwargs: Any
    ) -> ImageDataset:
        """The records of one split (None: all records), with the table's classes."""
        records = table.records if split is None else table.split(split)
        classes = table.classes if table.task == "classification" else None
        return cls(records, transform, classes=classes, **kwargs)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch  # see the module docstring

        x = self.transform(load_image(self.records[i].path, max_pixels=self.max_pixels))
        return x, torch.tensor(self.targets[i])
