"""A tiny real search in the scaled A0 space: search's runner and trainer, the family's space and target."""

import dataclasses

import pytest
import yaml

from family import load_family, scale_space
from family.run import search_members
from family.scaling import default_family_path

TINY = {"data": {"source": "synthetic", "num_classes": 2, "train_clips": 1, "val_clips": 1, "batch_size": 1},
        "budget": {"epochs": 1, "steps_per_epoch": 1},
        "search": {"algorithm": "random", "num_trials": 1, "seed": 0, "resources": {"cpus": 1}}}


@pytest.fixture
def tiny_budget_family(tmp_path):
    """The published family's A0 member on a base space whose data and training budget are tiny."""
    folder = default_family_path().parent
    base = yaml.safe_load((folder / "base_space.yaml").read_text())
    (tmp_path / "base.yaml").write_text(yaml.safe_dump({**base, **TINY}))
    family = yaml.safe_load(default_family_path().read_text())
    family.update(base={"space": "base.yaml", "fps": family["base"]["fps"]}, members={"a0": family["members"]["a0"]})
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(family))
    return path


def test_tiny_budget_family_searches_the_a0_space(tiny_budget_family):
    published = scale_space(load_family(), "a0")
    tiny = scale_space(load_family(tiny_budget_family), "a0")
    assert dataclasses.replace(tiny, data={}, budget={}, settings=None, source="") == \
        dataclasses.replace(published, data={}, budget={}, settings=None, source="")


@pytest.mark.slow
def test_a_real_search_in_the_a0_space_trains_candidates_within_5_percent_of_the_target(tiny_budget_family,
                                                                                       tmp_path):
    results = search_members("a0", family=tiny_budget_family, backend="kerastuner", output_dir=tmp_path / "out")
    result = results["a0"]
    target = scale_space(load_family(tiny_budget_family), "a0").objective.target_macs
    assert result.folder == tmp_path / "out" / "movinet_a0"
    assert [row["status"] for row in result.rows] == ["ok"]
    assert all(abs(row["macs"] / target - 1) <= 0.05 for row in result.rows)
    assert result.best is not None and result.best.exists()
