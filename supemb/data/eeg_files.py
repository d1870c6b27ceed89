"""EEG files -> recordings and targets (no preprocessing, no torch).

- reading: `read_recording` (.edf, .bdf, .fif, preloaded mne Raw);
- channel names: `normalize_channel_name` maps a recording's labels
  (`EEG FP1-REF`, `Fp1`, modern `T7`) onto bare 10-20 names (`FP1`, `T3`);
  `channel_lookup` finds the spec's channels in a recording;
- targets: a CSV (`path,<target>[,split]`, paths relative to the CSV;
  `read_targets_csv`) or, for `age`, the EDF patient field in the TUH
  convention (`Age:NN`; `age_from_header`); `list_recordings` is what
  `--data PATH --target COLUMN` means for EEG.

Splits are drawn over recordings, never over windows (`supemb.data.splits`,
with EEG_VAL_FRAC / EEG_TEST_FRAC). mne is imported where a file is read.
"""

from __future__ import annotations

import contextlib
import csv
import logging
import math
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Iterator, Sequence

from supemb.data.splits import SPLITS
from supemb.errors import UserError

if TYPE_CHECKING:  # mne is imported where used: importing this module stays light
    import mne


# The TUH EEG corpus' 19 scalp channels of the 10-20 system (old T3/T4/T5/T6
# names, which TUH uses; modern T7/T8/P7/P8 are mapped onto them).
TUH_CHANNELS: tuple[str, ...] = (
    "FP1", "FP2", "F7", "F3", "FZ", "F4", "F8",
    "T3", "C3", "CZ", "C4", "T4",
    "T5", "P3", "PZ", "P4", "T6",
    "O1", "O2",
)  # fmt: skip

EEG_SUFFIXES: tuple[str, ...] = (".edf", ".bdf", ".fif", ".fif.gz")
# The default val/test fractions of an EEG run: recordings are few, so a
# larger share than for images (0.1) keeps val and test usable.
EEG_VAL_FRAC: float = 0.15
EEG_TEST_FRAC: float = 0.15

# Modern 10-10 names -> the older 10-20 names used by TUH.
_MODERN_TO_OLD = {"T7": "T3", "T8": "T4", "P7": "T5", "P8": "T6"}
# Reference suffixes that mean "this electrode against a reference", not a
# bipolar derivation: `EEG FP1-REF` is FP1, but `FP1-F7` stays `FP1-F7`.
_REFERENCE_SUFFIXES = {"REF", "LE", "AR", "AVG", "CAR", "A1", "A2", "M1", "M2"}
_AGE_RE = re.compile(r"\bAge\s*:\s*(\d+(?:\.\d+)?)", re.IGNORECASE)


# ------------------------------------------------------------ channel names


def normalize_channel_name(name: str) -> str:
    """Map a recording's channel label to a bare upper-case 10-20 name.

    `EEG FP1-REF`, `EEG Fp1-LE`, `fp1` -> `FP1`; `EEG T3-REF` -> `T3`; modern
    `T7`/`T8`/`P7`/`P8` -> `T3`/`T4`/`T5`/`T6` (TUH uses the old names). Only
    reference suffixes (-REF, -LE, -AR, -AVG, -CAR, -A1, -A2, -M1, -M2) are
    dropped; a bipolar label like `FP1-F7` is kept as `FP1-F7`. Anything else
    (e.g. `EKG1-REF` -> `EKG1`) is passed through upper-cased.
    """
    s = name.strip().upper()
    if s.startswith("EEG "):
        s = s[4:].strip()
    if "-" in s:
        head, _, tail = s.rpartition("-")
        if tail.strip() in _REFERENCE_SUFFIXES and head.strip():
            s = head.strip()
    return _MODERN_TO_OLD.get(s, s)


def channel_lookup(ch_names: Sequence[str]) -> dict[str, str]:
    """normalised name -> original label; the first of duplicates wins."""
    out: dict[str, str] = {}
    for ch in ch_names:
        out.setdefault(normalize_channel_name(ch), ch)
    return out


# ------------------------------------------------------------ reading files


def is_eeg_file(path: Path) -> bool:
    return path.name.lower().endswith(EEG_SUFFIXES)


# mne's verbose= sets its process-wide log level for the call and restores it after: two threads
# (the decode threads of supemb.embed.batches) would restore each other's INFO mid-read, and mne
# logs to stdout, into `--json` output. So every mne call of ours with verbose= runs inside
# `quiet_mne()`: under this lock while mne's level is below ERROR (a library caller's default),
# unlocked where it is ERROR already (the command line sets MNE_LOGGING_LEVEL), since setting
# and restoring ERROR cannot let INFO through; the lock halves 2-thread EEG decoding.
MNE_LOCK = threading.Lock()


@contextlib.contextmanager
def quiet_mne() -> Iterator[None]:
    """The context every mne call of ours with verbose="error" runs in (see MNE_LOCK). The level
    is read under the lock, so never while a locked call has lifted it to ERROR for a moment."""
    with MNE_LOCK:
        quiet = logging.getLogger("mne").level >= logging.ERROR
    with contextlib.nullcontext() if quiet else MNE_LOCK:
        yield


def read_recording(path: str | Path) -> mne.io.BaseRaw:
    """Read an .edf, .bdf or .fif recording, preloaded. One-line UserError on failure."""
    import mne

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such EEG file")
    name = path.name.lower()
    readers = {".edf": mne.io.read_raw_edf, ".bdf": mne.io.read_raw_bdf, ".fif": mne.io.read_raw_fif,
               ".fif.gz": mne.io.read_raw_fif}
    reader = next((r for suffix, r in readers.items() if name.endswith(suffix)), None)
    if reader is None:
        raise UserError(f"{path}: not an EEG file (expected .edf, .bdf or .fif)")
    try:
        with quiet_mne():
            raw = reader(path, preload=True, verbose="error")
    except UserError:
        raise
    except Exception as e:  # mne raises many types for damaged files
        # mne parses a cut-off header's blank fields as numbers ("could not convert string to float: ''")
        # and finds no data after a cut-off one: say what is wrong with the file instead.
        damage = _edf_damage(path) if isinstance(e, (ValueError, AssertionError, IndexError)) else None
        if damage:
            raise UserError(f"{path}: truncated or corrupt {damage}") from e
        msg = " ".join(str(e).split()) or type(e).__name__
        raise UserError(f"{path}: cannot read the recording ({msg})") from e
    return raw


def _edf_damage(path: Path) -> str | None:
    """'EDF (<what is missing>)' when an EDF/BDF file is shorter than its own header says, else None.

    The header is 256 bytes plus 256 per signal; the data is n_records records of
    (the signals' samples per record) samples of 2 (EDF) or 3 (BDF) bytes."""
    kind = {".edf": "EDF", ".bdf": "BDF"}.get(path.suffix.lower())
    if kind is None:
        return None
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(256)
            if size == 0:
                return f"{kind} (the file is empty)"
            if not (b"0       ".startswith(head[:8]) or b"\xffBIOSEMI".startswith(head[:8])):
                return None  # not an EDF/BDF at all: mne's own message says so
            if size < 256:
                return f"{kind} (the header is incomplete: the file has {size} bytes, a header needs at least 256)"
            n_signals = int(head[252:256])
            header = 256 * (n_signals + 1)
            if n_signals < 1:
                return None
            if size < header:
                return (f"{kind} (the header is incomplete: the file has {size} bytes, "
                        f"its header of {n_signals} signals needs {header})")
            n_records = int(head[236:244])
            f.seek(256 + n_signals * 216)  # label 16, transducer 80, unit 8, ranges 4 x 8, prefilter 80
            per_record = sum(int(f.read(8)) for _ in range(n_signals))
    except (OSError, ValueError):
        return None
    record = per_record * (3 if kind == "BDF" else 2)  # bytes
    if n_records > 0 and size < header + record:  # not one whole record: mne finds "no data"
        return (f"{kind} (the file ends before its data does: it has {size} bytes, "
                f"its header promises {header + n_records * record})")
    return None



# ------------------------------------------------------------------ targets


@dataclass(frozen=True)
class EEGRecord:
    """One recording and its target. split: "train"/"val"/"test" or None (not yet drawn)."""

    path: Path
    target: float | str
    split: str | None = None


def read_patient_field(path: str | Path) -> str:
    """The 80-byte patient-identification field of an EDF/BDF header (bytes 8..88)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            head = f.read(88)
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from e
    if len(head) < 88 or not (head[:8] == b"0       " or head[:8] == b"\xffBIOSEMI"):
        raise UserError(f"{path}: not an EDF/BDF file (bad header)")
    return head[8:88].decode("latin-1").strip()


MAX_AGE = 130  # years; a header age above it is a typo or a code, not an age


def parse_age(text: str) -> float | None:
    """`... Age:35 ...` (TUH convention, case-insensitive) -> 35.0; None if absent or above MAX_AGE."""
    m = _AGE_RE.search(text)
    return float(m.group(1)) if m and float(m.group(1)) <= MAX_AGE else None


def age_from_header(path: str | Path) -> float:
    """Age in years from the TUH `Age:NN` tag.

    EDF/BDF: read from the patient field of the file's header ourselves (mne
    only parses that field for EDF+). FIF: looked for in subject_info's
    `his_id`. Raises UserError naming the file when there is no usable age.
    """
    path = Path(path)
    field = "the patient field"
    if path.name.lower().endswith((".fif", ".fif.gz")):
        import mne

        if not path.is_file():
            raise UserError(f"{path}: no such EEG file")
        try:
            with quiet_mne():  # the header only, not the recording
                info = mne.io.read_info(path, verbose="error").get("subject_info") or {}
        except Exception as e:  # mne raises many types for damaged files
            raise UserError(f"{path}: cannot read the recording ({' '.join(str(e).split()) or type(e).__name__})")
        text, field = str(info.get("his_id", "")), "subject_info's his_id"
    else:
        text = read_patient_field(path)
    age = parse_age(text)
    if age is None:
        raise UserError(
            f"{path}: no age in the header (expected 'Age:NN', NN at most {MAX_AGE}, in {field}, "
            f"found {text!r}); give the ages in a CSV instead"
        )
    return age


def read_targets_csv(csv_path: str | Path, target: str, skipped: list[str] | None = None) -> list[EEGRecord]:
    """Records from a CSV with a `path` column (relative to the CSV), a `target` column
    and an optional `split` column.

    Targets are floats when every value parses as a number, else strings (classes).
    skipped: None raises on a bad row; a list collects "CSV: line N: problem" and leaves the row out.
    """
    csv_path = Path(csv_path)
    try:
        with open(csv_path, newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
            header = rows[0].keys() if rows else []
    except OSError as e:
        raise UserError(f"{csv_path}: cannot read ({e.strerror})") from e
    if not rows:
        raise UserError(f"{csv_path}: no rows")
    for col in ("path", target):
        if col not in header:
            raise UserError(
                f"{csv_path}: no column {col!r} (columns: {', '.join(header)})"
            )
    raw_targets: list[str] = []
    paths: list[Path] = []
    splits: list[str | None] = []
    for i, row in enumerate(rows, start=2):  # line 1 is the header
        p, t = (row.get("path") or "").strip(), (row.get(target) or "").strip()
        full = Path(p) if Path(p).is_absolute() else csv_path.parent / p
        sp = (row.get("split") or "").strip() or None
        problem = (f"empty 'path' or {target!r}" if not p or not t else f"no such file {full}" if not full.is_file()
                   else f"split {sp!r} is not one of {SPLITS}" if sp is not None and sp not in SPLITS else None)
        if problem:
            _bad(f"{csv_path}: line {i}: {problem}", skipped)
            continue
        paths.append(full)
        raw_targets.append(t)
        splits.append(sp)
    if not paths:  # every row was left out
        raise UserError(f"{csv_path}: no usable rows ({len(skipped or [])} skipped; first: {(skipped or [''])[0]})")
    numeric = [_to_float(t) for t in raw_targets]
    targets: list[float | str] = (
        list(raw_targets) if any(v is None for v in numeric) else [float(v) for v in numeric]  # type: ignore[arg-type]
    )
    return [EEGRecord(p, t, s) for p, t, s in zip(paths, targets, splits)]


def _to_float(s: str) -> float | None:
    try:
        v = float(s)
    except ValueError:
        return None
    return v if math.isfinite(v) else None


def list_recordings(data: str | Path, target: str, skipped: list[str] | None = None) -> list[EEGRecord]:
    """What `--data PATH --target COLUMN` means for EEG.

    data: a CSV, or a folder. A folder's `labels.csv` is used when it has the
    target column; otherwise, for target "age", every EDF/BDF/FIF under the
    folder (sorted) gets its age from its header. Splits come from the CSV's
    `split` column where present, else None (draw them with `supemb.data.splits.assign_splits`).
    skipped: None raises on a bad row or header; a list collects each problem and leaves the file out.
    """
    data = Path(data)
    if data.is_file() and data.suffix.lower() == ".csv":
        return read_targets_csv(data, target, skipped)
    if not data.is_dir():
        raise UserError(f"{data}: not a CSV file or a folder of EEG recordings")
    labels = data / "labels.csv"
    if labels.is_file():
        with open(labels, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if target in header:
            return read_targets_csv(labels, target, skipped)
    if target != "age":
        raise UserError(
            f"{data}: no labels.csv with a {target!r} column (only 'age' can come from EDF headers)"
        )
    files = sorted(p for p in data.rglob("*") if p.is_file() and is_eeg_file(p))
    if not files:
        raise UserError(f"{data}: no .edf, .bdf or .fif recordings found")
    records = []
    for p in files:
        try:
            records.append(EEGRecord(p, age_from_header(p)))
        except UserError as err:
            _bad(str(err), skipped)
    if not records:
        raise UserError(f"{data}: no recording has a usable age ({len(files)} skipped; first: {skipped[0]})")
    return records


def _bad(problem: str, skipped: list[str] | None) -> None:
    """Raise `problem`, or (a `skipped` list: on_error "skip") note it and go on."""
    if skipped is None:
        raise UserError(problem)
    skipped.append(problem)
