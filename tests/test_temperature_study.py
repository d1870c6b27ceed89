"""experiments/temperature.py: how the study turns its validation figures into each loss's default."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
temperature = pytest.importorskip("temperature")


def _study(maes: dict[float, float]) -> dict:
    points = [{"temperature": t, "val_knn_mae": v} for t, v in maes.items()]
    return {"points": points, "chosen": min(maes, key=maes.get), "rule": "lowest val kNN MAE"}


def test_rnc_default_is_the_lowest_mean_relative_figure_over_its_studies():
    """Each study's MAE is divided by that study's best before averaging: a task with large errors
    (EEG, in years) does not outvote one with small ones; only temperatures every study tried count."""
    results = {"rnc": _study({1.0: 3.0, 2.0: 3.6, 5.0: 3.1}),
               "rnc-eeg": _study({1.0: 10.0, 2.0: 9.0}),  # 5 not tried here: not a candidate
               "supcon": _study({0.5: 0.0})}  # another loss: not counted
    got = temperature.loss_choice(results, "rnc")
    assert got["studies"] == ["rnc", "rnc-eeg"]
    assert got["relative_val_mae"] == pytest.approx({"1": (1.0 + 10 / 9) / 2, "2": (1.2 + 1.0) / 2})
    assert got["best"] == got["chosen"] == 1.0  # the mean raw MAE would pick 2 (6.3 against 6.5 years/°C)


def test_todays_default_stays_unless_clearly_beaten():
    """Within MOVE_MARGIN (a seed's spread) of the lowest mean, the current default is kept."""
    m = temperature.MOVE_MARGIN
    close = {"rnc": _study({1.0: 3.0 * (1 + m / 2), 2.0: 3.0}), "rnc-faces": _study({1.0: 5.0, 2.0: 5.0})}
    got = temperature.loss_choice(close, "rnc", current=1.0)
    assert (got["best"], got["chosen"]) == (2.0, 1.0)
    clear = {"rnc": _study({1.0: 3.0 * (1 + 3 * m), 2.0: 3.0}), "rnc-faces": _study({1.0: 5.0, 2.0: 5.0})}
    assert temperature.loss_choice(clear, "rnc", current=1.0)["chosen"] == 2.0
    assert temperature.loss_choice(close, "rnc", current=5.0)["chosen"] == 2.0  # not tried: nothing to keep
    assert temperature.loss_choice({}, "rnc") is None


def test_the_registry_defaults_are_the_ones_the_recorded_study_chose():
    """docs/temperature.json's choice is the package's: a study rerun that moves a default fails here
    until LOSSES (and the figures made with the old one) follow."""
    import json

    from supemb.losses.registry import LOSSES

    record = json.loads((Path(__file__).resolve().parents[1] / "docs" / "temperature.json").read_text())
    assert set(record["defaults"]) == {"supcon", "rnc"}
    for loss, choice in record["defaults"].items():
        assert LOSSES[loss].temperature == choice["chosen"], loss
        assert choice["chosen"] in [p["temperature"] for name in choice["studies"] for p in record[name]["points"]]


def test_seed_check_table_sets_each_temperature_over_its_seeds(tmp_path):
    seeds_mod = pytest.importorskip("temperature_seeds")
    machine = {"command": "x", "cpu": "c", "cpu_count": 2, "torch_threads": 2, "torch": "t", "python": "p",
               "platform": "l", "date": "d"}
    run = {"machine": machine, "study": "rnc-eeg", "seeds": ["0", "1", "2"],
           "rows": {"1": {"0": {"val": 8.0, "test": 7.0}, "1": {"val": 9.0, "test": 8.0},
                          "2": {"val": 10.0, "test": 9.0}},
                    "5": {"1": {"val": 7.0, "test": 6.0}, "2": {"val": 7.5, "test": 6.5}}}}  # no seed 0 here
    text = seeds_mod.write_markdown({"runs": [run]}, tmp_path).read_text()
    assert "| 1 | 8.000 | 9.000 | 10.000 | 9.000 (8.000–10.000) | 8.000 |" in text
    assert "| 5 | – | 7.000 | 7.500 | 7.250 (7.000–7.500) | 6.250 |" in text


def test_seed_check_sets_every_recorded_run_of_the_study_together(tmp_path):
    seeds_mod = pytest.importorskip("temperature_seeds")
    machine = {"command": "cmd", "cpu": "c", "cpu_count": 2, "torch_threads": 2, "torch": "t", "python": "p",
               "platform": "l", "date": "d"}
    first = {"machine": machine, "study": "rnc-eeg", "seeds": ["0", "1"],
             "rows": {"1": {"0": {"val": 8.0, "test": 7.0}, "1": {"val": 9.0, "test": 8.0}}}}
    other = {"machine": machine, "study": "rnc", "seeds": ["0", "5"], "rows": {"1": {"5": {"val": 1.0, "test": 1.0}}}}
    later = {"machine": {**machine, "command": "cmd2"}, "study": "rnc-eeg", "seeds": ["0", "3"],
             "rows": {"1": {"0": {"val": 8.0, "test": 7.0}, "3": {"val": 10.0, "test": 9.0}}}}
    text = seeds_mod.write_markdown({"runs": [first, other, later]}, tmp_path).read_text()
    assert "| 1 | 8.000 | 9.000 | 10.000 | 9.000 (8.000–10.000) | 8.000 |" in text  # seeds 0, 1, 3; not seed 5
    assert "`cmd`; `cmd2`" in text
    # every study has its own section, with its own seeds
    webcam = text.index("## RnC on the synthetic webcam frames")
    assert text.index("## RnC on the synthetic resting EEG") < webcam
    assert "| 1 | 1.000 | 1.000 (1.000–1.000) | 1.000 |" in text[webcam:]


def test_seed_check_shows_supcons_tie_break(tmp_path):
    seeds_mod = pytest.importorskip("temperature_seeds")
    machine = {"command": "cmd", "cpu": "c", "cpu_count": 2, "torch_threads": 2, "torch": "t", "python": "p",
               "platform": "l", "date": "d"}
    run = {"machine": machine, "study": "supcon", "seeds": ["0", "1"],
           "rows": {"1": {"0": {"val": 1.0, "test": 0.99, "map": 0.9}, "1": {"val": 0.98, "test": 0.97, "map": 0.8}}}}
    text = seeds_mod.write_markdown({"runs": [run]}, tmp_path).read_text()
    assert "val MAP@R mean (min–max)" in text
    assert "| 1 | 1.000 | 0.980 | 0.990 (0.980–1.000) | 0.850 (0.800–0.900) | 0.980 |" in text
    p = {"temperature": 1.0, "val_knn_acc": 1.0, "test_knn_acc": 0.99, "val_map_at_r": 0.9}
    assert seeds_mod._figures(p, "supcon") == {"val": 1.0, "test": 0.99, "map": 0.9}
