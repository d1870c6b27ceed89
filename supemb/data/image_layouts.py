"""Image dataset layouts -> an `ImageTable` (see docs/DESIGN.md, "Data layouts").

- "csv": a CSV, or a folder holding `labels.csv`, with a `path` column
  (relative to the CSV), one column per target and an optional `split`
  column (train/val/test).
- "folder": one sub-folder per class (optionally under train/val/test).
- "utkface", "agedb": labels in the file names
  (`supemb.data.image_filename_layouts`).

`load_image_table` is what `--data PATH --target COLUMN [--format F]` means
for images: it detects the layout, reads it (bad rows raise one line naming
file and line, or are skipped and listed) and draws a seeded split for
records without one (`supemb.data.splits`).
"""

from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Callable

from supemb.data.image_filename_layouts import NAMED_LAYOUTS, named_layout, read_agedb_table, read_utkface_table
from supemb.data.image_files import images_under, is_image_file, one_line
from supemb.data.image_table import ImageTable, RawRow, RowProblems, make_table
from supemb.data.splits import SPLITS
from supemb.errors import UserError

FORMATS: tuple[str, ...] = ("auto", "csv", "folder", "utkface", "agedb")


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
        if data.suffix.lower() == ".tsv":
            raise UserError(f"{data}: a tab-separated file; supemb reads comma-separated .csv files")
        raise UserError(f"{data}: not a CSV file or a folder of images")
    if not data.is_dir():
        raise UserError(f"{data}: no such file or folder")
    if (data / "labels.csv").is_file():
        return "csv"
    if _class_dirs(data):
        return "folder"
    layout = named_layout([p.name for p in _loose_images(data)])
    if layout is not None:
        return layout
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
        raise UserError(f"{csv_path}: cannot read as a UTF-8 CSV ({one_line(e)})") from None
    if "path" not in header:
        _refuse_other_delimiter(csv_path, header)
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

    rows: list[RawRow] = []
    seen: dict[str, tuple[int, str, str]] = {}  # file -> (line, path as written, target) of its first row
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
        else:
            first = seen.setdefault(_file_key(full), (line, p, t))
            if first[0] != line:
                problem = _listed_twice(first, (line, p, t), target)
        rows.append(RawRow(where, full, t, sp or None, problem))
    return make_table(rows, target, task, RowProblems(on_error), layout="csv", source=csv_path)


def _refuse_other_delimiter(csv_path: Path, header: list[str]) -> None:
    """A header read as one field holding ';' or tabs: Excel's semicolon CSV or a TSV."""
    if len(header) != 1:
        return
    semis, tabs = header[0].count(";"), header[0].count("\t")
    if semis or tabs:
        sep = "';'" if semis >= tabs else "tabs"
        raise UserError(f"{csv_path}: fields are separated by {sep}; supemb reads comma-separated files "
                        "(save it as CSV with commas)")


def _file_key(path: Path) -> str:
    """The same key for the names of one file written relative, absolute or with `..` (text only:
    no second stat per row; two links to one file count as two files)."""
    return os.path.normcase(os.path.abspath(path))


def _listed_twice(first: tuple[int, str, str], again: tuple[int, str, str], target: str) -> str:
    """The problem of a row whose image an earlier row (`first`) already lists."""
    (line0, p0, t0), (line, p, t) = first, again
    spelt = f"; line {line0} writes it {p0!r}" if p0 != p else ""
    msg = f"{p} is listed twice (lines {line0} and {line}{spelt})"
    if t0 != t and not _same_number(t0, t):
        msg += f" with different {target!r}: {t0!r} and {t!r}"
    return msg


def _same_number(a: str, b: str) -> bool:
    try:
        return float(a) == float(b)
    except ValueError:
        return False


# -------------------------------------------------------------- folder layout


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "__")))


def _loose_images(folder: Path) -> list[Path]:
    """The image files directly in `folder` (not in its sub-folders), sorted."""
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _named_hint(root: Path) -> str:
    """"; its file names look like UTKFace's: pass --format utkface" (or AgeDB's), else ""."""
    layout = named_layout([p.name for p in images_under(root)])
    if layout is None:
        return ""
    return f"; its file names look like {NAMED_LAYOUTS[layout][0]}'s: pass --format {layout}"


def _split_folders(root: Path, subdirs: list[Path]) -> list[Path] | None:
    """root's train/ val/ test/ folders when it has that layout (only split folders, or
    train/ beside val/ or test/; then any other folder is refused), else None."""
    splits = sorted((d for d in subdirs if d.name.lower() in SPLITS), key=lambda d: SPLITS.index(d.name.lower()))
    others = [d for d in subdirs if d.name.lower() not in SPLITS]
    if not splits or (others and not ({"train"} < {d.name.lower() for d in splits})):
        return None
    if others:
        what = " and ".join(f"{d.name}/" for d in others)
        one = len(others) == 1
        raise UserError(f"{root}: {what} {'is' if one else 'are'} beside {' '.join(f'{d.name}/' for d in splits)}: "
                        f"a split layout holds only those; move {'it' if one else 'them'} out")
    return splits


def read_folder_table(
    data: str | Path, target: str | None = None, *, task: str = "classification", on_error: str = "raise"
) -> ImageTable:
    """One sub-folder per class: `root/<class>/**/*.jpg`, or with fixed splits
    `root/<train|val|test>/<class>/**/*.jpg`. target: "class" (the default; the
    sub-folders' names), the only one.

    Always classification; empty class folders are ignored. Images beside the
    class folders are left out and listed in `table.skipped` (not an error).
    """
    root = Path(data)
    if not root.is_dir():
        raise UserError(f"{root}: not a folder")
    if target not in (None, "class"):
        raise UserError(f"{root}: a folder-per-class dataset has one target, 'class' (its sub-folders' names), "
                        f"not {target!r}{_named_hint(root)}")
    if task == "regression":
        raise UserError(f"{root}: a folder-per-class dataset holds classes, not values: a bundle of values, or a "
                        f"run of rnc (the default) or l1, cannot use it; train on it with --loss supcon, tsc or ce"
                        f"{_named_hint(root)}")
    problems = RowProblems(on_error)
    splits = _split_folders(root, _class_dirs(root))
    groups = [(d, d.name.lower()) for d in splits] if splits else [(root, None)]
    for folder in dict.fromkeys([root, *(parent for parent, _ in groups)]):
        for p in _loose_images(folder):
            problems.leave_out(str(p), "not inside a class folder")
    rows: list[RawRow] = []
    for parent, split in groups:
        for class_dir in _class_dirs(parent):
            rows.extend(RawRow(str(p), p, class_dir.name, split) for p in images_under(class_dir))
    if not rows:
        loose = f"; {len(problems.skipped)} image(s) not inside a class folder" if problems.skipped else ""
        raise UserError(f"{root}: no images in class sub-folders (expected {root}/<class>/<image>{loose})")
    return make_table(rows, "class", "classification", problems, layout="folder", source=root)
