"""A tiny real search in the scaled A0 space: search's runner and trainer, the family's space and target."""

import dataclasses
import subprocess
import sys

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


def test_a_resumed_family_search_starts_the_members_it_had_not_reached(tiny_budget_family, tmp_path):
    def stand_in(candidate, space, report):
        return {"top1": 0.5, "epoch": 1}

    results = search_members("a0", family=tiny_budget_family, backend="kerastuner", output_dir=tmp_path / "out",
                             resume=True, trial_fn=stand_in, echo=lambda line: None)
    assert [row["status"] for row in results["a0"].rows] == ["ok"]


PARALLEL_DRIVER = """
import time, ray
from family.run import search_members

def trial_fn(candidate, space, report):   # a stand-in trial: two seconds, one epoch
    time.sleep(2.0)
    return {{"top1": 0.5, "epoch": 1}}

results = search_members("all", family={family!r}, parallel=True, output_dir={out!r}, num_cpus=2,
                         trial_fn=trial_fn, echo=lambda line: None)
(a0,), (a1,) = ([(row["started_at"], row["started_at"] + row["seconds"]) for row in results[name].rows]
                 for name in ("a0", "a1"))
print(sorted((name, result.folder.name, [row["status"] for row in result.rows]) for name, result in results.items()),
      a0[0] < a1[1] and a1[0] < a0[1], ray.is_initialized())
"""


@pytest.mark.slow
@pytest.mark.xdist_group("ray")   # starts a local Ray: not beside the search tests' cluster
def test_parallel_member_searches_run_at_once_on_one_local_ray(tiny_budget_family, tmp_path):
    """`movinet family search all --parallel`: each member's search in a Ray task of its own on one
    local Ray, their trials at the same time, each member's results in its folder; Ray is gone after."""
    family = yaml.safe_load(tiny_budget_family.read_text())
    family["members"]["a1"] = yaml.safe_load(default_family_path().read_text())["members"]["a1"]
    tiny_budget_family.write_text(yaml.safe_dump(family))
    script = PARALLEL_DRIVER.format(family=str(tiny_budget_family), out=str(tmp_path / "out"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == \
        "[('a0', 'movinet_a0', ['ok']), ('a1', 'movinet_a1', ['ok'])] True False", done.stdout
