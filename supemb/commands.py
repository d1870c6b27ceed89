"""The serving subcommands: `supemb export`, `index`, `predict`, `eval`.

Each `*_parser(p)` adds its arguments to an argparse parser and returns the
handler; `supemb.cli` registers them. Handlers check their flags first and
raise `UsageError` (exit 2) for a wrong command line, `UserError` (exit 1) for
a bad file, bundle or run, and return the exit code.

The bundle's digest (`Bundle.digest`, the sha256 of its canonical manifest)
is printed by `predict` and `eval` on stderr ("supemb predict: bundle B digest
HEX"), and in their --json output: a "bundle_digest" field in every prediction
of predict's list, and in eval's metrics. `--digest HEX` refuses a bundle whose
digest differs. `export` and `index` print the digest of what they wrote.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from supemb.errors import ON_ERROR_FLAGS, UsageError, UserError, raise_or_skip

Handler = Callable[[argparse.Namespace], int]
INDEX_KINDS = ("flat", "ivf", "hnsw")
PROCESSES_HELP = ("embed the gallery with N processes, each taking a shard of it (for large galleries on "
                  "many cores); the bundle is identical to one process's (default 1)")


def _processes(args: argparse.Namespace) -> int:
    if args.processes < 1:
        raise UsageError(f"--processes must be >= 1, got {args.processes}")
    return args.processes


def _at_least(flag: str, value: int | None, minimum: int) -> None:
    """A numeric flag below its minimum is a usage error (exit 2); None: not given."""
    if value is not None and value < minimum:
        raise UsageError(f"{flag} must be >= {minimum}, got {value}")


class _Skipped:
    """Says on stderr which item `supemb COMMAND --on-error skip` left out, and why, and counts them:
    a command that left out an input it was given ends with exit code 1, as `supemb predict` does."""

    def __init__(self, command: str) -> None:
        self.command, self.count = command, 0

    def __call__(self, item: str) -> None:
        self.count += 1
        print(f"supemb {self.command}: skipped: {item}", file=sys.stderr)

    def exit_code(self, asked_to_skip: bool) -> int:
        # a run trained with --on-error skip exports without its bad items: those are not a failure now
        return 1 if self.count and asked_to_skip else 0


def _data_format(fmt: str) -> str:
    from supemb import modalities

    if fmt not in modalities.formats():
        raise UsageError(f"--format must be one of {', '.join(modalities.formats())}, got {fmt!r}")
    return fmt


def _pin(args: argparse.Namespace) -> str | None:
    """--digest, checked for form before the bundle is opened."""
    if args.digest is None:
        return None
    from supemb.predict.manifest import parse_digest

    try:
        return parse_digest(args.digest)
    except UserError as err:
        raise UsageError(f"--digest: {err}") from None


def _digest_of(bundle_dir: str | Path) -> str:
    """The digest of the bundle just written at `bundle_dir` (a directory or .zip)."""
    from supemb.predict.manifest import MANIFEST, manifest_digest

    p = Path(bundle_dir)
    if p.is_dir():
        return manifest_digest(json.loads((p / MANIFEST).read_text()))
    import zipfile

    with zipfile.ZipFile(p) as z:
        return manifest_digest(json.loads(z.read(MANIFEST)))


def _add_digest_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--digest", metavar="SHA256",
                   help="refuse the bundle unless its digest (printed by predict, eval, export) is this one")


def export_parser(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("run", help="a finished training run directory (supemb train --out)")
    p.add_argument("--out", required=True, help="bundle directory to write (or a path ending in .zip)")
    p.add_argument("--gallery", help="labelled data to index instead of the run's training split")
    p.add_argument("--opset", type=int, help="ONNX opset (default 18)")
    p.add_argument("--fp16", action="store_true",
                   help="float16 weights for GPU serving (parity checked to 1e-2 instead of 1e-4)")
    p.add_argument("--index", default="flat", choices=INDEX_KINDS,
                   help="FAISS index: flat = exact (default); ivf or hnsw for galleries past ~1M items")
    p.add_argument("--k", type=int, help="default number of neighbours (default: the run's)")
    p.add_argument("--unit", default="", help="unit of the target, shown with predictions (e.g. years)")
    p.add_argument("--name", help="bundle name shown by the demo (default: the --out name)")
    p.add_argument("--thumbnails", type=int, default=0, metavar="PX",
                   help="store PX x PX thumbnails of image galleries, for showing neighbours (default 0: none)")
    p.add_argument("--on-error", choices=ON_ERROR_FLAGS, default="fail",
                   help="skip: leave unreadable gallery items out, naming each (exit code 1 if any was)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.add_argument("--processes", type=int, default=1, metavar="N", help=PROCESSES_HELP)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where the gallery is embedded: cpu (default), or cuda: one GPU per process")
    p.add_argument("--detect-faces", action="store_true",
                   help="serve photos cropped to their face (a face-detection step before the resize); "
                        "the gallery, already face crops, is embedded as it is")

    def run(args: argparse.Namespace) -> int:
        from supemb.export.writer import export_run

        _at_least("--k", args.k, 1)
        _at_least("--thumbnails", args.thumbnails, 0)
        _at_least("--opset", args.opset, 1)
        on_error, processes, skipped = raise_or_skip(args.on_error), _processes(args), _Skipped("export")
        m = export_run(args.run, args.out, gallery=args.gallery, opset=args.opset, fp16=args.fp16,
                       index=args.index, k=args.k, unit=args.unit, name=args.name, thumbnails=args.thumbnails,
                       force=args.force, on_error=on_error, processes=processes,
                       device=args.device, detect_faces=args.detect_faces, on_skip=skipped)
        diffs = m["onnx"]["parity_max_abs_diff"]
        print(f"wrote {args.out}: {m['modality']} {m['task']}, {m['embedding_dim']}-d, "
              f"gallery {m['gallery']['items']} ({m['index']['kind']} index), "
              f"parity max |ONNX - PyTorch| {max(diffs.values()):.2g}"
              + (f", residual head {m['onnx']['parity_head_max_abs_diff']:.2g} {m['target'].get('unit') or ''}".rstrip()
                 if "parity_head_max_abs_diff" in m["onnx"] else ""))
        print(f"digest {_digest_of(args.out)}")
        return skipped.exit_code(on_error == "skip")

    return run


def index_parser(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("bundle", help="bundle directory")
    p.add_argument("--data", required=True, help="labelled data (any layout `supemb train` reads)")
    p.add_argument("--append", action="store_true", help="add to the gallery instead of replacing it")
    p.add_argument("--index", choices=INDEX_KINDS, help="FAISS index type (default: the bundle's)")
    p.add_argument("--target", help="target column (default: the bundle's target name)")
    p.add_argument("--format", default="auto", help="auto | eeg | csv | folder | utkface | agedb (default auto)")
    p.add_argument("--on-error", choices=ON_ERROR_FLAGS, default="fail",
                   help="skip: leave unreadable items out, naming each (exit code 1 if any was)")
    p.add_argument("--processes", type=int, default=1, metavar="N", help=PROCESSES_HELP)
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda", "auto"],
                   help="where the gallery is embedded: cpu (default), or cuda: one GPU per process")

    def run(args: argparse.Namespace) -> int:
        from supemb.export.writer import reindex

        fmt, on_error, processes = _data_format(args.format), raise_or_skip(args.on_error), _processes(args)
        skipped = _Skipped("index")
        m = reindex(args.bundle, args.data, append=args.append, index=args.index, target=args.target,
                    fmt=fmt, on_error=on_error, processes=processes, device=args.device, on_skip=skipped)
        print(f"{args.bundle}: gallery now {m['gallery']['items']} items ({m['index']['kind']} index), "
              f"digest {_digest_of(args.bundle)}")
        return skipped.exit_code(on_error == "skip")

    return run


def _format_prediction(p: Any, unit: str) -> str:
    if not p.ok:
        return f"{p.source}\terror: {p.error}"
    if p.value is not None:
        what = f"{p.value:.2f} ± {p.uncertainty:.2f}{(' ' + unit) if unit else ''}"
    else:
        what = f"{p.label} (p={1 - p.uncertainty:.2f})"
    near = ", ".join(f"{n.label if isinstance(n.label, str) else round(n.label, 2)}@{n.similarity:.2f}"
                     for n in p.neighbours[:5])
    familiar = ""
    if p.familiarity is not None:  # bundles exported before the familiarity table have none
        familiar = f"\tfamiliarity: {p.familiarity:.3f}{' UNFAMILIAR: unlike the gallery' if p.unfamiliar else ''}"
    face = f"\tface {[round(v) for v in p.face['box']]} score {p.face['score']:.2f}" if p.face else ""
    return f"{p.source}\t{what}{familiar}\tneighbours: {near}{face}"


def predict_parser(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("bundle", help="bundle directory or .zip")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files, or EDF/BDF/FIF recordings")
    p.add_argument("--k", type=int, help="neighbours (default: the bundle's)")
    p.add_argument("--median", action="store_true", help="regression: weighted median of the neighbours")
    p.add_argument("--json", action="store_true",
                   help="one JSON list with values, uncertainty, familiarity, neighbours")
    p.add_argument("--on-error", choices=ON_ERROR_FLAGS, default="fail",
                   help="skip: predict the good inputs and list the bad (exit code 1 if any was bad)")
    p.add_argument("--batch-size", type=int, default=64, help="inputs embedded at once (default 64)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the encoder runs: auto (default: CUDA when available), cpu or cuda")
    p.add_argument("--no-detect", action="store_true",
                   help="a bundle that finds faces: the photos are face crops already, skip the detection")
    p.add_argument("--all-faces", action="store_true",
                   help="a bundle that finds faces: one prediction per face (default: the largest face)")
    _add_digest_flag(p)

    def run(args: argparse.Namespace) -> int:
        from supemb.predict.bundle import load_bundle

        _at_least("--k", args.k, 1)
        _at_least("--batch-size", args.batch_size, 1)
        on_error, digest = raise_or_skip(args.on_error), _pin(args)
        bundle = load_bundle(args.bundle, device=args.device, digest=digest)
        print(f"supemb predict: bundle {args.bundle} digest {bundle.digest}", file=sys.stderr)
        preds = bundle.predict(args.inputs, k=args.k, batch_size=args.batch_size, on_error=on_error,
                               reduce="median" if args.median else None, detect=not args.no_detect,
                               faces="all" if args.all_faces else "largest")
        if args.json:
            print(json.dumps([{**p.to_dict(), "bundle_digest": bundle.digest} for p in preds], indent=1))
        else:
            for pr in preds:
                if pr.ok:
                    print(_format_prediction(pr, bundle.unit))
        bad = [pr for pr in preds if not pr.ok]
        for pr in bad:
            print(f"supemb predict: skipped: {pr.error}", file=sys.stderr)
        return 1 if bad else 0

    return run


def evaluate_bundle(bundle: Any, data: str | Path, *, target: str | None = None, fmt: str = "auto",
                    k: int | None = None, on_error: str = "raise", detect: bool = True) -> dict[str, Any]:
    """Metrics of a bundle's predictions on labelled `data` (as in training):
    regression: the served value's MAE/RMSE/R², mean spread and coverage (the share of errors
    inside the served ±) as "served_*" keys (the trainer's `test_served_mae`: plain or residual
    kNN, as "served" says; per recording for EEG), and embedding ordinality; classification:
    kNN accuracy, balanced accuracy, P@1 and MAP@R against the gallery (EEG per recording,
    "rec_" keys, as the trainer names them).
    Everything compares embeddings in the bundle's metric (cosine or l2)."""
    from supemb.export.gallery import append_tag, data_gallery, same_item
    from supemb.predict import retrieval
    from supemb.predict.calibration import coverage_of
    from supemb.predict.neighbours import recording_embeddings

    src = data_gallery(data, bundle.plugin, bundle.task, target or bundle.target_name, fmt=fmt,
                       on_error=on_error)
    k = bundle.default_k if k is None else k
    emb, owner, failures = bundle.encoder.embed_rows(src.items, on_error=on_error, decode=bundle.decoder_for(detect))
    preds = bundle.predict_embeddings(emb, owner, src.items, k=k, failures=failures)
    ok = [i for i, p in enumerate(preds) if p.ok]
    if not ok:
        raise UserError(f"{data}: none of the items could be predicted")
    tag = append_tag(data)
    # a grouped input (recording) is scored whole; a value is named for what is served (plain or residual kNN)
    prefix = "served" if bundle.task == "regression" else "rec_knn" if bundle.plugin.grouped else "knn"
    out: dict[str, Any] = {"items": len(ok), "skipped": [f.message for f in failures] + list(src.skipped),
                           "k": k, "gallery": bundle.index.ntotal,
                           # items whose nearest neighbour is the gallery's item of the same name (as added
                           # by index --append too): itself
                           "in_gallery": sum(same_item(preds[i].neighbours[0].id, src.ids[i], tag) for i in ok)}
    if bundle.task == "regression":
        out["served"] = "residual kNN" if bundle.residual else "kNN"  # the manifest's knn.residual, or none
        y = np.array([src.targets[i] for i in ok], dtype=np.float64)
        pred = np.array([preds[i].value for i in ok])
        out.update({f"{prefix}_{n}": v for n, v in retrieval.regression_metrics(pred, y).items()})
        unc = np.array([preds[i].uncertainty for i in ok])
        out[f"{prefix}_spread"] = float(np.mean(unc))
        out[f"{prefix}_coverage"] = coverage_of(pred - y, unc)  # the share of errors inside the served ±
        rec_emb = recording_embeddings(emb, owner, len(preds), bundle.metric)[ok]
        if len(ok) >= 2:
            out["ordinality"] = retrieval.ordinality(rec_emb, y, metric=bundle.metric)
    else:
        y = [str(src.targets[i]) for i in ok]
        names = sorted(set(y) | set(bundle.labels))
        code = {c: i for i, c in enumerate(names)}
        pred = np.array([code[preds[i].label] for i in ok])
        yt = np.array([code[c] for c in y])
        out[f"{prefix}_acc"] = retrieval.accuracy(pred, yt)
        out[f"{prefix}_bacc"] = retrieval.balanced_accuracy(pred, yt)
        top1 = np.array([preds[i].neighbours[0].label == y[j] for j, i in enumerate(ok)])
        out["p_at_1"] = float(top1.mean())
        gallery_counts = np.bincount(bundle.targets, minlength=len(bundle.labels))
        r_max = int(gallery_counts.max())
        if r_max <= 2000:
            # MAP@R against the bundle's own (FAISS) gallery: queries whose class it lacks are skipped
            known = [j for j, label in enumerate(y)
                     if label in bundle.labels and gallery_counts[bundle.labels.index(label)] > 0]
            if known:
                rec_emb = recording_embeddings(emb, owner, len(preds), bundle.metric)[[ok[j] for j in known]]
                _, idx = bundle.index.search(rec_emb, r_max)
                c = np.array([bundle.labels.index(y[j]) for j in known])
                r = gallery_counts[c]
                ap = retrieval.average_precision_at_r(idx, c, bundle.targets, r)
                out["map_at_r"] = float(np.mean(ap))
    return {key: (float(v) if isinstance(v, (np.floating, float)) else v) for key, v in out.items()}


def eval_parser(p: argparse.ArgumentParser) -> Handler:
    p.add_argument("bundle", help="bundle directory or .zip")
    p.add_argument("--data", required=True, help="labelled data (any layout `supemb train` reads)")
    p.add_argument("--target", help="target column (default: the bundle's target name)")
    p.add_argument("--format", default="auto", help="auto | eeg | csv | folder | utkface | agedb (default auto)")
    p.add_argument("--k", type=int, help="neighbours (default: the bundle's)")
    p.add_argument("--json", action="store_true", help="print the metrics as JSON")
    p.add_argument("--on-error", choices=ON_ERROR_FLAGS, default="fail",
                   help="skip: leave unreadable items out, naming each (exit code 1 if any was)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="where the encoder runs: auto (default: CUDA when available), cpu or cuda")
    p.add_argument("--no-detect", action="store_true",
                   help="a bundle that finds faces: the data's photos are face crops already (as its gallery)")
    _add_digest_flag(p)

    def run(args: argparse.Namespace) -> int:
        from supemb.predict.bundle import load_bundle

        _at_least("--k", args.k, 1)
        fmt, on_error, digest = _data_format(args.format), raise_or_skip(args.on_error), _pin(args)
        bundle = load_bundle(args.bundle, device=args.device, digest=digest)
        print(f"supemb eval: bundle {args.bundle} digest {bundle.digest}", file=sys.stderr)
        m = evaluate_bundle(bundle, args.data, target=args.target, fmt=fmt, k=args.k,
                            on_error=on_error, detect=not args.no_detect)
        if m["in_gallery"]:
            print(f"supemb eval: note: {m['in_gallery']} of {m['items']} items are in the bundle's gallery (each is "
                  "its own nearest neighbour), so these figures are optimistic; evaluate on data the gallery does "
                  "not hold", file=sys.stderr)
        if args.json:
            print(json.dumps({**m, "bundle_digest": bundle.digest}, indent=2))
        else:
            for key, v in m.items():
                if key == "skipped":
                    for s in v:
                        print(f"skipped: {s}")
                else:
                    print(f"{key}\t{v:.4f}" if isinstance(v, float) else f"{key}\t{v}")
        return 1 if m["skipped"] else 0  # figures over fewer items than --data holds

    return run
