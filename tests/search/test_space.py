"""Search spaces: parsing and its errors, one-point spaces of the published models, the cost filter."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import yaml

from movinet.cost import cost
from movinet.spec import load_spec, named_specs
from search import SpaceError, check_feasible, decode, load_space, space_from_dict, space_from_spec
from search.candidate import candidate_macs
from search.samplers import GridSampler
from search.space import dump_space, space_to_dict

HERE = Path(__file__).parent
TINY = HERE / "tiny.yaml"
DEMO = HERE.parents[1] / "specs" / "spaces" / "demo.yaml"


def tiny_dict() -> dict:
    return yaml.safe_load(TINY.read_text())


def test_space_files_parse_and_round_trip():
    for path in (TINY, DEMO):
        space = load_space(path)
        again = space_from_dict(yaml.safe_load(dump_space(space)), str(path))
        assert again == space
        assert space_to_dict(again) == space_to_dict(space)


def test_size_counts_every_point_once():
    space = load_space(TINY)
    points = list(space.points())
    assert len(points) == space.size() == 640
    assert len({decode(space, p).key for p in points}) == 640


def test_decoding_follows_the_choices():
    space = load_space(TINY)
    point = {"input.resolution": 40, "input.frames": 4, "input.frame_stride": 1, "stem.filters": 8,
             "b0.filters": 16, "b0.depth": 2, "b0.stride": 2, "b0.l0.expand": 3.0, "b0.l0.kernel": "1x3x3",
             "b0.l1.expand": 2.0, "b0.l1.kernel": "3x3x3", "b1.filters": 24, "b1.depth": 1, "b1.stride": 2,
             "b1.l0.expand": 48, "b1.l0.kernel": "3x3x3", "head.project_filters": 32,
             "head.head_filters": 64, "options.se_type": "none"}
    candidate = decode(space, point)
    block0, block1 = candidate.spec.blocks
    assert [(l.expand, l.kernel, l.stride) for l in block0.layers] == [
        (48, (1, 3, 3), (1, 2, 2)), (32, (3, 3, 3), (1, 1, 1))]      # ratios x 16, multiples of 8
    assert [(l.expand, l.kernel, l.stride) for l in block1.layers] == [(48, (3, 3, 3), (1, 2, 2))]
    assert (candidate.frames, candidate.resolution, candidate.options) == (4, 40, {"se_type": "none"})
    assert candidate.spec.name == f"tiny-{candidate.key}"


def _set(data: dict, path: str, value) -> dict:
    data = copy.deepcopy(data)
    keys = path.split(".")
    node = data
    for key in keys[:-1]:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if value is _DELETE:
        del node[keys[-1]]
    else:
        node[keys[-1]] = value
    return data


_DELETE = object()


@pytest.mark.parametrize("path, value, field, expected", [
    ("space.blocks.0.filters", [8, 0], "space.blocks[0].filters[1]", "positive integer"),
    ("space.blocks.0.depth", [3, 1], "space.blocks[0].depth", "min <= max"),
    ("space.blocks.0.kernel", [[1, 3]], "space.blocks[0].kernel[0]", "three positive integers"),
    ("space.blocks.0.stride", 3, "space.blocks[0].stride", "one of [1, 2]"),
    ("space.blocks.0.expand", [32], "space.blocks[0]", "not both"),
    ("space.blocks.1.expand", _DELETE, "space.blocks[1].layers[0].expand", "missing"),
    ("space.blocks.0.layers", [{"kernel": [1, 3, 3]}] * 3, "space.blocks[0].layers", "depth is at most 2"),
    ("space.blocks.0.widths", [8], "space.blocks[0]", "unknown field(s) ['widths']"),
    ("space.input.resolution", [32, 32], "space.input.resolution", "distinct"),
    ("space.stem.kernel", [3, 3, 3], "space.stem.kernel", "temporal kernel must be 1"),
    ("space.options.se_type", ["2plus3d", "4d"], "space.options.se_type[1]", "expected one of"),
    ("space.options.colour", ["red"], "space.options", "unknown field(s) ['colour']"),
    ("objective.window", 1.5, "objective.window", "(0, 1)"),
    ("objective.beta", 0.5, "objective.beta", "in (-inf, 0)"),
    ("objective.target_macs", "lots", "objective.target_macs", "expected a number"),
    ("objective.metric", "top7", "objective.metric", "expected one of ['reward', 'top1']"),
    ("search.algorithm", "annealing", "search.algorithm", "expected one of"),
    ("search.scheduler", "pbt", "search.scheduler", "expected one of ['asha', 'none']"),
    ("search.num_trials", 0, "search.num_trials", "positive integer"),
    ("search.resources", {"cpu": 1}, "search.resources", "unknown field(s) ['cpu']"),
    ("budget.epochs", _DELETE, "budget.epochs", "missing"),
])
def test_errors_name_file_field_and_expectation(path, value, field, expected):
    with pytest.raises(SpaceError) as caught:
        space_from_dict(_set(tiny_dict(), path, value), "spaces/broken.yaml")
    message = str(caught.value)
    assert message.startswith(f"spaces/broken.yaml: {field}: "), message
    assert expected in message, message


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(SpaceError, match="no such search space file"):
        load_space(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed")
    with pytest.raises(SpaceError, match=f"{bad}: not valid YAML"):
        load_space(bad)


PUBLISHED = [name for name in named_specs() if name.startswith("a")]


@pytest.mark.parametrize("name", PUBLISHED)
def test_published_model_is_a_one_point_space(name):
    spec = load_spec(name)
    target = cost(spec, "stream").macs
    space = space_from_spec(spec, target_macs=target)
    space = space_from_dict(yaml.safe_load(dump_space(space)), f"<{name}>")     # and survives YAML
    assert space.size() == 1
    (point,) = space.points()
    candidate = decode(space, point)
    assert candidate.spec.replace(name=spec.name, input=spec.input, published=spec.published) == spec
    assert (candidate.frames, candidate.resolution) == (spec.input.frames, spec.input.resolution)
    assert candidate_macs(space, candidate) == target
    assert check_feasible(space, samples=5) == 1.0


def test_cost_filter_is_exact():
    space = load_space(TINY)
    low, high = space.objective.bounds
    assert space.objective.accepts(low) and space.objective.accepts(high)
    assert not space.objective.accepts(low - 1) and not space.objective.accepts(high + 1)
    rng = random.Random(0)
    for _ in range(20):
        candidate = decode(space, space.sample(lambda p: rng.choice(p.choices)))
        expected = cost(candidate.spec, "stream", frames=candidate.frames, resolution=candidate.resolution,
                        num_classes=4, **candidate.options)
        assert candidate.cost(4).macs == candidate_macs(space, candidate) == expected.macs
    # A grid keeps exactly the points inside the window, each once; the rest are counted.
    inside = {decode(space, p).key for p in space.points()
              if low <= candidate_macs(space, decode(space, p)) <= high}
    sampler = GridSampler(space)
    kept = []
    while (candidate := sampler.suggest()) is not None:
        kept.append(candidate.key)
    assert sorted(kept) == sorted(inside)
    assert 0 < len(inside) < 640 and sampler.rejected == 640 - len(inside)


def test_space_without_a_member_in_the_window_fails_before_running():
    data = _set(tiny_dict(), "objective.target_macs", 1e12)
    with pytest.raises(SpaceError, match=r"tiny.yaml: objective: no candidate meets the cost window.*"
                                         r"cost 604,416 to 3,032,576"):
        check_feasible(space_from_dict(data, str(TINY)))


@pytest.mark.parametrize("section, value, expected", [
    ("data", {"frames": 8}, "data.frames: the clip is searched: set it under space.input"),
    ("data", {"colour": "red"}, "data.colour: unknown; expected DataConfig fields"),
    ("budget", {"epochs": 1, "optimiser": "sgd"}, "budget: unknown training setting(s) ['optimiser']"),
])
def test_training_sections_are_checked_against_the_trainer(section, value, expected):
    from search.training import check_training_sections

    data = _set(tiny_dict(), section, value)
    with pytest.raises(SpaceError) as caught:
        check_training_sections(space_from_dict(data, "spaces/broken.yaml"))
    assert str(caught.value).startswith(f"spaces/broken.yaml: {expected}"), str(caught.value)


def test_the_number_of_classes_comes_from_the_data_when_not_given():
    from search.training import check_training_sections

    data = _set(tiny_dict(), "data", {"source": "synthetic", "train_clips": 8, "val_clips": 4, "batch_size": 4})
    assert check_training_sections(space_from_dict(data)).num_classes == 4



def test_a_synthetic_data_section_is_checked_without_reading_clips():
    from search.training import check_training_sections

    data = _set(tiny_dict(), "data", {"source": "synthetic", "train_clips": 4, "batch_size": 8})
    with pytest.raises(SpaceError, match=r"small.yaml: data: batch_size=8 is larger than the 4 training clips"):
        check_training_sections(space_from_dict(data, "spaces/small.yaml"))


DRIVER_CHECKS = """
import sys
from search import load_space
from search.samplers import make_sampler
from search.candidate import check_feasible
from search.training import check_training_sections
import search.ray_backend, search.run

for path in sys.argv[1:]:
    space = check_training_sections(load_space(path))
    check_feasible(space)
    make_sampler(space).plan(4)
print(space.num_classes, sorted(name for name in sys.modules if name.split(".")[0] in ("tensorflow", "keras")))
"""


def test_the_driver_checks_a_space_without_importing_tensorflow(tmp_path):
    """The search driver trains nothing: importing TensorFlow there costs seconds for nothing."""
    import subprocess
    import sys

    no_classes = tmp_path / "no_classes.yaml"
    no_classes.write_text(yaml.safe_dump(_set(yaml.safe_load(DEMO.read_text()), "data",
                                              {"source": "synthetic", "train_clips": 8, "batch_size": 4})))
    done = subprocess.run([sys.executable, "-c", DRIVER_CHECKS, str(DEMO), str(no_classes)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["4", "[]"], done.stdout


def _planned_order_is_longest_first(sampler, space, count):
    planned = sampler.plan(count)
    macs = [candidate_macs(space, candidate) for candidate in planned]
    assert macs == sorted(macs, reverse=True)
    return planned


@pytest.mark.parametrize("algorithm", ["random", "grid"])
def test_planned_trials_are_the_seeded_draws_largest_first(algorithm):
    from search.samplers import make_sampler

    space = load_space(TINY)
    drawn = make_sampler(space, algorithm)
    one_by_one = [drawn.suggest() for _ in range(8)]
    sampler = make_sampler(space, algorithm)
    planned = _planned_order_is_longest_first(sampler, space, 6)
    assert [c.key for c in planned] != [c.key for c in one_by_one[:6]], "the draws were already in order"
    assert sorted(c.key for c in planned) == sorted(c.key for c in one_by_one[:6])
    assert [sampler.suggest().key for _ in range(8)] == [c.key for c in planned + one_by_one[6:]]
    assert sampler.rejected == drawn.rejected
    again = make_sampler(space, algorithm)
    assert [c.key for c in again.plan(6)] == [c.key for c in planned]   # the seed fixes the order too


def test_a_resumed_search_plans_only_what_it_has_not_run(tmp_path):
    from search.samplers import make_sampler

    space = load_space(TINY)
    first = make_sampler(space)
    planned = first.plan(6)
    resumed = make_sampler(space)
    for candidate in planned[:2]:                  # two trials finished before the search was killed
        resumed.replay(candidate, {"top1": 0.5, "macs": candidate_macs(space, candidate), "reward": 0.5})
    rest = _planned_order_is_longest_first(resumed, space, 4)
    assert [c.key for c in rest] == [c.key for c in planned[2:]]


@pytest.mark.parametrize("algorithm", ["tpe", "multi_objective"])
def test_a_sampler_that_learns_from_results_draws_one_by_one(algorithm):
    from search.samplers import make_sampler

    sampler = make_sampler(load_space(TINY), algorithm)
    assert sampler.plan(4) == []
    assert sampler.suggest() is not None
