"""experiments/temperature_check.py: the rule fixed before the run decides whether EEG's RnC temperature moves."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "experiments"))
check = pytest.importorskip("temperature_check")


def _rows(low: list[float], high: list[float], first: int = 0) -> dict:
    return {"1": {str(first + i): {"val": v} for i, v in enumerate(low)},
            "5": {str(first + i): {"val": v} for i, v in enumerate(high)}}


EARLIER = _rows([8.2, 8.1, 9.3, 8.3, 7.3], [7.6, 7.9, 8.2, 8.0, 7.9])  # 4 of 5 lower at 5


def test_sign_test_tail():
    assert check.sign_p(7, 7) == pytest.approx(1 / 128)
    assert check.sign_p(6, 7) == pytest.approx(8 / 128)
    assert check.sign_p(0, 3) == 1.0


def test_moves_only_when_the_fresh_set_agrees_and_the_pairs_clear_the_sign_test():
    both = check.decide(_rows([8.0, 8.0], [7.5, 7.9]), EARLIER, "1", "5")
    assert both["move"] and both["wins"] == 6 and both["pairs"] == 7
    one = check.decide(_rows([8.0, 8.0], [7.0, 8.1]), EARLIER, "1", "5")  # lower mean, but 5 of 7 pairs
    assert one["fresh_lower_mean"] and one["wins"] == 5 and not one["move"]
    worse = check.decide(_rows([8.0, 8.0], [8.1, 8.2]), EARLIER, "1", "5")
    assert not worse["fresh_lower_mean"] and not worse["move"]
    assert not check.decide({}, EARLIER, "1", "5")["move"]  # nothing fresh: nothing moves


def test_only_seeds_trained_at_both_temperatures_pair():
    fresh = {"1": {"0": {"val": 8.0}, "1": {"val": 8.0}}, "5": {"0": {"val": 7.0}}}
    assert check.decide(fresh, {}, "1", "5")["pairs"] == 1


def test_markdown_states_the_rule_and_the_verdict(tmp_path):
    rows = {t: {s: {**v, "test": v["val"] + 0.5} for s, v in per.items()}
            for t, per in _rows([8.0, 8.0], [7.5, 7.9]).items()}
    machine = {"platform": "x", "cpu": "y", "cpu_count": 2, "torch_threads": 2, "torch": "t", "python": "p",
               "date": "d", "command": "c"}
    run = {"machine": machine, "data": check.DATA_TEXT, "rule": check.RULE, "rows": rows,
           "decision": check.decide(rows, EARLIER, "1", "5")}
    text = check.write_markdown({"runs": [run]}, tmp_path).read_text()
    assert check.RULE in text and "**moves to 5**" in text and "| 5 | 7.500 | 7.900 | 7.700 | 8.200 |" in text


def test_the_eeg_recipe_temperature_is_the_recorded_checks_verdict():
    """docs/temperature-check.json's latest verdict is the package's: EEG's RnC temperature is the
    challenger where the check moved it and the loss's default where it did not."""
    import json

    from supemb import modalities
    from supemb.losses.registry import LOSSES

    record = json.loads((Path(__file__).resolve().parents[1] / "docs" / "temperature-check.json").read_text())
    d = record["runs"][-1]["decision"]
    want = float(d["high"] if d["move"] else d["low"])
    assert modalities.get("eeg").recipe.get("temperatures", {}).get("rnc", LOSSES["rnc"].temperature) == want
    assert float(d["low"]) == LOSSES["rnc"].temperature  # the check challenged the default in force


def test_recipe_temperature_fills_only_an_unset_temperature_of_its_loss():
    from supemb import modalities
    from supemb.losses.registry import LOSSES
    from supemb.train.config import TrainConfig, resolve_defaults

    plain = {k: v for k, v in modalities.get("image").recipe.items() if k != "temperatures"}
    other = {**plain, "temperatures": {"rnc": LOSSES["rnc"].temperature + 2.5}}

    def resolved(recipe, **kw):
        return resolve_defaults(TrainConfig(data="d", out="o", **kw), recipe, None).temperature

    assert resolved(other, loss="rnc", target="age") == LOSSES["rnc"].temperature + 2.5
    assert resolved(other, loss="rnc", target="age", temperature=2.0) == 2.0  # the user's wins
    assert resolved(other, loss="supcon", target="class") == LOSSES["supcon"].temperature  # not its loss
    assert resolved(other, loss="l1", target="age") is None  # baselines have none
    assert resolved(plain, loss="rnc", target="age") == LOSSES["rnc"].temperature


def test_train_help_names_each_recipe_temperature():
    """`supemb train --help` spells the overrides out (it imports no plug-in): kept in step here."""
    from supemb import modalities
    from supemb.train.config import TRAIN_FLAGS

    help_text = next(f.help for f in TRAIN_FLAGS if f.name == "temperature")
    shown = {"rnc": "RnC", "supcon": "SupCon", "tsc": "TSC"}
    overrides = [(name, loss, t) for name in modalities.names()
                 for loss, t in modalities.get(name).recipe.get("temperatures", {}).items()]
    assert overrides  # EEG's, today
    for name, loss, t in overrides:
        assert f"{shown[loss]} on {name.upper()}: {t:g}" in help_text
