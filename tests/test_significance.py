"""experiments/significance.py: the paired bootstrap behind docs/significance.md, and how each
comparison picks its rows."""

import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
significance = pytest.importorskip("significance")


def _draw(c, p, draws=2000):
    return significance.bootstrap(np.asarray(c, float), np.asarray(p, float), draws, np.random.default_rng(0))


def test_equal_errors_give_ratio_one_in_every_draw():
    err = np.random.default_rng(1).exponential(size=(3, 50))
    r = _draw(err, err)
    assert r["ratio"] == pytest.approx(1.0) and r["low"] == pytest.approx(1.0) and r["high"] == pytest.approx(1.0)
    assert r["share_contrastive_ahead"] == 0.0 and r["per_seed_ratio"] == pytest.approx([1.0] * 3)


def test_ratio_averages_seeds_before_dividing():
    p = np.array([[1.0] * 4, [2.0] * 4])
    c = np.array([[0.5] * 4, [3.0] * 4])  # seed ratios 0.5 and 1.5 (their mean: 1); MAEs 1.75 against 1.5
    r = _draw(c, p)
    assert r["ratio"] == pytest.approx(1.75 / 1.5) and r["per_seed_ratio"] == pytest.approx([0.5, 1.5])
    assert r["mae_contrastive"] == pytest.approx(1.75) and r["n_inputs"] == 4


def test_draws_are_paired_over_inputs():
    # errors vary a lot between inputs, and the contrastive side is always 10 % lower on the same
    # input: paired draws keep the ratio at 0.9; unpaired ones would spread it widely.
    p = np.random.default_rng(2).exponential(size=(1, 40)) * 10
    r = _draw(0.9 * p, p)
    assert r["low"] == pytest.approx(0.9) and r["high"] == pytest.approx(0.9)
    assert r["share_contrastive_ahead"] == 1.0


def test_interval_holds_the_ratio_and_narrows_with_more_inputs():
    rng = np.random.default_rng(3)
    widths = []
    for n in (30, 1200):
        p = rng.exponential(size=(3, n))
        c = p * rng.uniform(0.7, 1.3, size=(3, n))
        r = _draw(c, p)
        assert r["low"] < r["ratio"] < r["high"]
        widths.append(r["high"] - r["low"])
    assert widths[1] < widths[0] / 3


def test_rows_chosen_per_comparison():
    def errs(val, test):
        return {"val": {k: np.full(5, v) for k, v in val.items()}, "test": {k: np.full(5, v) for k, v in test.items()}}
    a, b = ("plain", "head"), ("plain", "knn")
    other = {("plain", "linear"): 9.0}
    seeds = [errs({a: 1.0, b: 2.0, **other}, {a: 3.0, b: 1.0, **other}),
             errs({a: 2.0, b: 1.0, **other}, {a: 3.0, b: 1.0, **other})]
    assert significance.choose(seeds, "plain", "validation", "test") == [a, b]  # per seed, by validation
    assert significance.choose(seeds, "plain", "evidence", "test") == [b, b]  # one row, by mean test MAE
    assert significance.choose(seeds, "plain", "knn", "test") == [b, b]


def test_reference_comparison_pairs_supemb_rows_with_the_scripts():
    # supemb's RnC: kNN best on validation and fresh (0.9x the script's kNN); its head worse.
    # The script's RnC: ridge best on validation, kNN best on the fresh inputs.
    # L1 rows are all equal on both sides: ratio 1 whichever rows are picked.
    rng = np.random.default_rng(4)
    base = rng.exponential(size=40) + 0.5
    full = lambda v: np.full(40, v)  # noqa: E731

    def seed():
        ours = {"val": {("contrastive", "knn"): full(1.0), ("contrastive", "linear"): full(2.0),
                        **{("plain", w): full(1.0) for w in ("head", "linear", "knn")}},
                "fresh": {("contrastive", "knn"): 0.9 * base, ("contrastive", "linear"): 2 * base,
                          **{("plain", w): base for w in ("head", "linear", "knn")}}}
        ref = {"val": {("reference", "rnc_knn"): full(2.0), ("reference", "rnc_ridge"): full(1.0),
                       **{("reference", f"l1_{w}"): full(1.0) for w in ("head", "knn", "ridge")}},
               "fresh": {("reference", "rnc_knn"): base, ("reference", "rnc_ridge"): 1.5 * base,
                         **{("reference", f"l1_{w}"): base for w in ("head", "knn", "ridge")}}}
        return ours, ref

    pairs = [seed(), seed()]
    out = significance.reference_comparisons([p[0] for p in pairs], [p[1] for p in pairs], 500)
    rnc = out["rnc"]
    assert rnc["knn"]["ratio"] == pytest.approx(0.9) and rnc["knn"]["reference_rows"] == ["rnc_knn"] * 2
    assert rnc["evidence"]["supemb_rows"] == ["knn"] * 2 and rnc["evidence"]["reference_rows"] == ["rnc_knn"] * 2
    assert rnc["validation"]["reference_rows"] == ["rnc_ridge"] * 2  # chosen on validation, not on fresh
    assert out["l1"]["knn"]["supemb_rows"] == ["knn"] * 2 and out["l1"]["knn"]["reference_rows"] == ["l1_knn"] * 2
    assert rnc["validation"]["ratio"] == pytest.approx(0.9 / 1.5)
    assert rnc["validation"]["low"] == pytest.approx(0.6) and rnc["validation"]["share_supemb_ahead"] == 1.0
    assert all(c["ratio"] == pytest.approx(1.0) for c in out["l1"].values())
    lines = significance.reference_table(out, "40 fresh test images")
    row = next(line for line in lines if line.startswith("| RnC | chosen on validation, per seed |"))
    assert row.startswith("| RnC | chosen on validation, per seed | kNN | ridge probe |") and "| 0.600 |" in row


def _finals(served_c, served_p, eeg=False):
    """Final metrics of a contrastive (rnc) and a plain (l1) run, as C.timed_train returns them."""
    lvl = "rec_" if eeg else ""
    c = {f"test_{lvl}knn_mae": 3.0, f"test_{lvl}linear_mae": 2.9, "served": "residual kNN"}
    p = {f"test_{lvl}knn_mae": 3.2, f"test_{lvl}linear_mae": 3.1, f"test_{lvl}head_mae": 3.3, "served": "kNN"}
    if served_c is not None:
        c["test_served_mae"], p["test_served_mae"] = served_c, served_p
    return {"rnc": c, "l1": p}


@pytest.mark.parametrize("task", ["webcam", "eeg"])
def test_evidence_tables_show_what_each_bundle_serves_and_pick_the_best_over_it(task, monkeypatch, tmp_path):
    """The served rows (test_served_mae: per recording for EEG already) are rows like the others,
    for both sides; the best figure of a side may be its served one; runs that predate them lack the rows."""
    import evidence as E

    finals = _finals(2.5, 3.05, eeg=task == "eeg")
    monkeypatch.setattr(E.C, "timed_train", lambda out, loss, **kw: (finals[loss], 1.0))
    res = E.main_table(task, tmp_path, epochs=1, seeds=2, data_kw={})
    rows = {(r["side"], r["what"]): r for r in res["rows"]}
    assert rows["contrastive", "served"]["key"] == rows["plain", "served"]["key"] == "test_served_mae"
    assert rows["contrastive", "knn"]["key"] == ("test_rec_knn_mae" if task == "eeg" else "test_knn_mae")
    assert (res["best_contrastive"]["what"], res["best_plain"]["what"]) == ("served", "served")
    assert res["ratio"] == pytest.approx(2.5 / 3.05)
    lines = E._task_markdown(task, {**res, "epochs": 1, "data": E._data_summary(task, True)})
    assert any("| RnC, as its bundle serves it" in ln and "2.50" in ln for ln in lines)
    assert any(ln.startswith("| RnC | ") and "residual kNN, residual kNN" in ln for ln in lines)
    finals.update(_finals(None, None, eeg=task == "eeg"))  # trained before supemb recorded what it serves
    old = E.main_table(task, tmp_path, epochs=1, seeds=2, data_kw={})
    assert {r["what"] for r in old["rows"]} == {"head", "linear", "knn"}
    assert (old["best_contrastive"]["what"], old["best_plain"]["what"]) == ("linear", "linear")


@pytest.mark.parametrize("task", ["webcam", "eeg"])
def test_less_data_study_chooses_over_the_served_figure_on_validation(task):
    """Each side's point of the less-data study is its best predictor on validation, the served
    one included (per recording for EEG), reported on test; runs from before lack it."""
    import evidence as E

    t, lvl = E.TASKS[task], "rec_" if task == "eeg" else ""
    c = {f"val_{lvl}knn_mae": 4.0, f"test_{lvl}knn_mae": 3.0, f"val_{lvl}linear_mae": 4.2, f"test_{lvl}linear_mae": 2.0,
         "val_served_mae": 3.9, "test_served_mae": 3.5, "served": "residual kNN", "seconds": 1.0}
    point = E.fraction_point(t, "contrastive", c)
    assert (point["chosen"], point["chosen_label"]) == ("served", "residual kNN, as served")
    assert (point["val"], point["test"]) == (3.9, 3.5)  # chosen on val, not the best test figure (2.0)
    assert point["all_test"] == {"knn": 3.0, "linear": 2.0, "served": 3.5}
    p = {f"val_{lvl}{w}_mae": v for w, v in (("head", 5.0), ("linear", 4.1), ("knn", 4.1))}
    p.update({f"test_{lvl}{w}_mae": v for w, v in (("head", 5.5), ("linear", 4.6), ("knn", 4.4))}, seconds=1.0)
    before = E.fraction_point(t, "plain", p)  # no served figure; a tie keeps the first (the probe)
    assert (before["chosen"], before["chosen_label"], before["test"]) == ("linear", "probe", 4.6)
    assert set(before["all_test"]) == {"head", "linear", "knn"}


def test_evidence_has_no_served_rows_for_classes():
    import evidence as E

    assert E.rows_of(E.TASKS["digits"]) == E.ROWS and E._key(E.TASKS["digits"], "test", "knn") == "test_knn_acc"


def test_served_rows_are_compared_as_each_run_chose_them():
    """"served" pairs what each bundle serves; the evidence and validation picks take the served
    rows too where the errors have them, and a tie keeps the familiar row."""
    def e(c, p):  # one seed's errors, the same on val and test
        maes = {("contrastive", "knn"): 3.0, ("contrastive", "linear"): 2.9, ("contrastive", "served"): c,
                ("plain", "head"): 3.3, ("plain", "linear"): 3.1, ("plain", "knn"): 3.2, ("plain", "served"): p}
        return {s: {row: np.full(4, v) for row, v in maes.items()} for s in ("val", "test")}

    seeds = [e(2.5, 3.2), e(2.6, 3.2)]  # plain serves its kNN: a tie with the kNN row
    assert significance.choose(seeds, "contrastive", "served", "test") == [("contrastive", "served")] * 2
    assert significance.choose(seeds, "contrastive", "evidence", "test") == [("contrastive", "served")] * 2
    assert significance.choose(seeds, "plain", "validation", "test") == [("plain", "linear")] * 2
    assert significance.choose([e(3.0, 3.05)], "plain", "evidence", "test") == [("plain", "served")]
    assert significance.choose([e(3.0, 3.1)], "plain", "evidence", "test") == [("plain", "linear")]  # tie: first
    old = [{s: {k: v for k, v in d.items() if k[1] != "served"} for s, d in x.items()} for x in seeds]
    assert significance.choose(old, "contrastive", "evidence", "test") == [("contrastive", "linear")] * 2


def test_served_predictor_is_the_residual_knn_model_json_records_else_plain_knn():
    from supemb.train.selection import residual_predict

    rng = np.random.default_rng(3)
    train, y, q = rng.normal(size=(30, 4)), rng.normal(size=30) * 5, rng.normal(size=(6, 4))

    class Run:  # what served_predictor reads of a C.LoadedRun
        metric = "l2"

        def __init__(self, residual):
            self.meta = {"knn_residual": residual}

        def features(self, split):
            return train

        def split(self, name):
            return type("S", (), {"targets": y})()

        def knn_predict(self, g, f):
            return np.full(len(f), 42.0)

    r = {"k": 5, "temperature": 0.5, "weight": [1.0, -2.0, 0.5, 0.0], "bias": 0.3}
    np.testing.assert_array_equal(significance.served_predictor(Run(r))(q), residual_predict(r, train, y, q, "l2"))
    assert significance.served_predictor(Run(None))(q).tolist() == [42.0] * 6


def test_a_partial_rerun_keeps_the_other_entries_and_says_where_they_come_from(tmp_path):
    """heldout.py --only / significance.py --keep-others: the sets or tasks not rerun stay from the latest
    recorded run, marked with its machine record; a second partial rerun keeps the first mark."""
    import json

    import _common as C

    path = tmp_path / "study.json"
    old = {"machine": {"date": "d1", "command": "first"}, "sets": {"a": {"x": 1}, "b": {"x": 2}}}
    path.write_text(json.dumps({"runs": [old]}))
    merged = C.keep_earlier(path, "sets", {"b": {"x": 3}}, ["a", "b", "c"])
    assert list(merged) == ["a", "b"] and merged["b"] == {"x": 3}
    assert merged["a"] == {"x": 1, "kept_from": old["machine"]}
    path.write_text(json.dumps({"runs": [old, {"machine": {"date": "d2"}, "sets": merged}]}))
    again = C.keep_earlier(path, "sets", {"b": {"x": 4}}, ["b", "a"])
    assert list(again) == ["b", "a"] and again["a"]["kept_from"] == old["machine"]  # still the run that made it
    assert C.keep_earlier(tmp_path / "none.json", "sets", {"b": {}}, ["a", "b"]) == {"b": {}}
    machine = {"command": "cmd", "cpu": "c", "cpu_count": 2, "torch_threads": 2, "torch": "t", "python": "p",
               "platform": "l", "date": "d"}
    assert "`cmd`" in C.kept_line({"kept_from": machine})[0] and C.kept_line({"x": 1}) == []


def test_residual_knn_marks_a_section_kept_from_an_earlier_run():
    """residual_knn.py --only: a task it did not rerun is printed with the run its figures come from."""
    import residual_knn as R

    m = {p: {"val": 2.0, "test": 3.0} for p in R.PREDICTORS}
    side = {"seeds": [0], "per_seed": [{**{p: dict(v) for p, v in m.items()}, "served": {**m["served"],
                                                                                       "which": "knn"}}], "mean": m}
    r = {"kind": "webcam", "sides": {"rnc": side, "l1": side}}
    machine = {"command": "old-cmd", "cpu": "c", "cpu_count": 2, "torch_threads": 2, "torch": "t", "python": "p",
               "platform": "l", "date": "d"}
    fresh, kept = R.section("t", "webcam", r), R.section("t", "webcam", {**r, "kept_from": machine})
    assert not any("Kept from" in line for line in fresh)
    assert kept[2].startswith("Kept from an earlier run (`old-cmd`)") and kept[4:] == fresh[2:]
