"""Compound scaling: every published model lies in its scaled space, targets, rules, bad files."""

import dataclasses

import pytest

import movinet
from family import FamilyError, contains, load_family, mismatches, scale_space, write_spaces
from family.scaling import default_family_path
from search.candidate import candidate_macs
from search.samplers import RandomSampler
from search.space import load_space

FAMILY = load_family()
MEMBERS = ["a0", "a1", "a2", "a3", "a4", "a5"]
BASE_SPACE = default_family_path().parent / "base_space.yaml"


@pytest.mark.parametrize("name", MEMBERS)
def test_published_model_lies_in_its_scaled_space(name):
    space = scale_space(FAMILY, name)
    assert mismatches(space, name) == []
    published = movinet.cost(name, "base").macs
    assert abs(space.objective.target_macs / published - 1) < 0.05


def test_published_models_lie_only_in_spaces_of_their_size():
    assert not contains(scale_space(FAMILY, "a0"), "a5")
    assert any("input.resolution" in m for m in mismatches(scale_space(FAMILY, "a5"), "a0"))


def test_written_spaces_load_with_the_search_parser(tmp_path):
    written = write_spaces(FAMILY, tmp_path)
    assert sorted(written) == MEMBERS
    for name, path in written.items():
        loaded = load_space(path)
        assert dataclasses.replace(loaded, source="") == dataclasses.replace(scale_space(FAMILY, name), source="")
        assert contains(loaded, name)


def test_unit_coefficients_give_the_base_space_back():
    a2 = scale_space(FAMILY, "a2")
    same = ("resolution", "frames", "frame_stride", "stem_filters", "blocks", "project_filters", "head_filters")
    assert all(getattr(a2, field) == getattr(FAMILY.base, field) for field in same)


def test_sampled_candidates_of_the_a0_space_meet_its_target():
    """The search's own sampler and cost filter, on the scaled A0 space."""
    space = scale_space(FAMILY, "a0")
    sampler = RandomSampler(space)
    candidates = [sampler.suggest() for _ in range(10)]
    target = space.objective.target_macs
    assert all(abs(candidate_macs(space, c) / target - 1) <= 0.05 for c in candidates)
    assert len({c.key for c in candidates}) == 10


def family_file(tmp_path, members, base=BASE_SPACE):
    text = f"name: mine\nbase: {{space: {base}, fps: 5}}\nmembers:\n" + "".join(
        f"  {name}:\n" + "".join(f"    {line}\n" for line in lines) for name, lines in members.items())
    path = tmp_path / "family.yaml"
    path.write_text(text)
    return path


def test_scaling_rules(tmp_path):
    """Widths to the nearest multiple of 8, depths rounded half up, the clip by resolution and frame rate."""
    path = family_file(tmp_path, {"big": ["coefficients: {depth: 1.5, width: 1.25, resolution: 2.0, frame_rate: 2.5}",
                                          "target: {gmacs: 40}"]})
    space = scale_space(load_family(path), "big")
    base = FAMILY.base
    assert space.name == "mine_big"
    assert space.stem_filters == (16, 24, 32)      # 8 * 1.25 = 10 -> 16: 8 would be more than 10% down
    assert space.blocks[0].depth == tuple(range(2, 9))             # [1, 5] * 1.5 = [1.5, 7.5] -> [2, 8]
    assert space.blocks[0].layers[-1] == base.blocks[0].layers[-1]
    assert (space.resolution, space.frames, space.frame_stride) == ((448,), (125,), (2,))
    assert space.objective.target_macs == 40e9


def test_users_can_add_members(tmp_path):
    path = family_file(tmp_path, {
        "a2": ["coefficients: {}", "target: {spec: a2}"],
        "a7": ["coefficients: {depth: 3.0, width: 1.8, resolution: 1.6, frame_rate: 2.4}",
               "input: {frames: 120, resolution: 358, fps: 12}", "target: {macs: 6.0e11}"]})
    family = load_family(path)
    assert list(family.members) == ["a2", "a7"]
    assert sorted(write_spaces(family, tmp_path / "out")) == ["a2", "a7"]
    assert scale_space(family, "a7").objective.target_macs == 6.0e11


@pytest.mark.parametrize("lines, field, message", [
    (["coefficients: {width: 0.1}", "target: {gmacs: 1}"], "members.tiny.coefficients: space.stem.filters",
     "width below 8"),
    (["coefficients: {depth: 0.2}", "target: {gmacs: 1}"], "members.tiny.coefficients: space.blocks[0].depth",
     "depth below 1"),
    (["coefficients: {depth: 0.5}"], "members.tiny.target", "missing"),
    (["coefficients: {depth: 0.5}", "target: {top1: 70}"], "members.tiny.target", "expected one of"),
    (["coefficients: {depth: -1}", "target: {gmacs: 1}"], "members.tiny.coefficients.depth", "positive"),
    (["coefficients: {resolution: 0.5}", "input: {resolution: 128}", "target: {gmacs: 1}"],
     "members.tiny.input.resolution", "scale the base clip to 112"),
])
def test_bad_family_files_name_file_and_field(tmp_path, lines, field, message):
    path = family_file(tmp_path, {"tiny": lines})
    with pytest.raises(FamilyError) as error:
        load_family(path)
    assert str(error.value).startswith(str(path))
    assert field in str(error.value) and message in str(error.value)


def test_unknown_member_is_an_error():
    with pytest.raises(FamilyError, match="no member 'a9'"):
        scale_space(FAMILY, "a9")
