"""Face datasets whose labels are in the file names: UTKFace and AgeDB.

- "utkface": `{age}_{gender}_{race}_{date}.jpg` (also `.jpg.chip.jpg`);
- "agedb": `{id}_{name}_{age}_{gender}.jpg`.

`parse_utkface` / `parse_agedb` read one name (None when it does not follow
the convention; `detect_format` counts them); the readers turn a flat folder
into an `ImageTable`, names that do not parse being bad rows.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Callable, Sequence

from supemb.data.image_files import images_under
from supemb.data.image_table import ImageTable, RawRow, RowProblems, make_table
from supemb.errors import UserError

# UTKFace's documented codes.
UTKFACE_GENDERS: tuple[str, ...] = ("male", "female")
UTKFACE_RACES: tuple[str, ...] = ("white", "black", "asian", "indian", "other")
AGEDB_GENDERS: dict[str, str] = {"m": "male", "f": "female"}

_UTK_RE = re.compile(r"^(\d{1,3})_(\d)_(\d)_(\d+)$")
_AGEDB_RE = re.compile(r"^(\d+)_(.+)_(\d{1,3})_([mMfF])$")


def _utk_stem(name: str) -> str:
    # UTKFace's aligned crops are named "..._{date}.jpg.chip.jpg": drop every suffix.
    return name.split(".", 1)[0]


def _agedb_stem(name: str) -> str:
    # AgeDB's name part may hold dots ("1_J.R.R.Tolkien_50_m.jpg"): drop the image suffix only.
    return name.rsplit(".", 1)[0]


def parse_utkface(name: str) -> dict[str, str] | None:
    """A UTKFace file name -> {"age", "gender", "race"} (text), or None when it does not parse."""
    m = _UTK_RE.match(_utk_stem(name))
    if m is None:
        return None
    age, gender, race, _ = m.groups()
    if int(gender) >= len(UTKFACE_GENDERS) or int(race) >= len(UTKFACE_RACES):
        return None
    return {"age": age, "gender": UTKFACE_GENDERS[int(gender)], "race": UTKFACE_RACES[int(race)]}


def parse_agedb(name: str) -> dict[str, str] | None:
    """An AgeDB file name -> {"age", "gender", "name"} (text), or None when it does not parse."""
    m = _AGEDB_RE.match(_agedb_stem(name))
    if m is None:
        return None
    _, person, age, gender = m.groups()
    return {"age": age, "gender": AGEDB_GENDERS[gender.lower()], "name": person}


NAMED_LAYOUTS: dict[str, tuple[str, Callable[[str], dict[str, str] | None]]] = {
    "utkface": ("UTKFace", parse_utkface),
    "agedb": ("AgeDB", parse_agedb),
}


def named_layout(names: Sequence[str]) -> str | None:
    """"utkface" or "agedb" when at least 90% of the image file `names` follow that
    convention, else None. Most, not all: the real UTKFace has a few misnamed
    files, which then surface as bad rows naming the file."""
    for layout, (_, parse) in NAMED_LAYOUTS.items():
        if names and sum(parse(n) is not None for n in names) >= 0.9 * len(names):
            return layout
    return None


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
    problems = RowProblems(on_error)
    files = images_under(root)
    if not files:
        raise UserError(f"{root}: no images found")
    rows: list[RawRow] = []
    for p in files:
        fields = parse(p.name)
        if fields is None:
            rows.append(RawRow(str(p), p, "", None, f"file name does not follow the {layout} convention {pattern}"))
        else:
            rows.append(RawRow(str(p), p, fields[target], None))
    return make_table(rows, target, task, problems, layout=layout, source=root)


def read_utkface_table(
    data: str | Path, target: str | None = None, *, task: str = "auto", on_error: str = "raise"
) -> ImageTable:
    """UTKFace: `{age}_{gender}_{race}_{date}.jpg` (also `.jpg.chip.jpg`), under `data`.

    target: "age" (default, regression), "gender" (male/female) or "race"
    (white/black/asian/indian/other). Names that do not parse are bad rows.
    """
    return _read_named(
        Path(data), target, task, on_error, layout="utkface", parse=parse_utkface,
        targets=("age", "gender", "race"), pattern="{age}_{gender}_{race}_{date}.jpg",
    )  # fmt: skip


def read_agedb_table(
    data: str | Path, target: str | None = None, *, task: str = "auto", on_error: str = "raise"
) -> ImageTable:
    """AgeDB: `{id}_{name}_{age}_{gender}.jpg` (gender m/f), under `data`.

    target: "age" (default, regression), "gender" or "name" (identity).
    """
    return _read_named(
        Path(data), target, task, on_error, layout="agedb", parse=parse_agedb,
        targets=("age", "gender", "name"), pattern="{id}_{name}_{age}_{gender}.jpg",
    )  # fmt: skip
