"""Named models: the registry table, A6 as the mean of A4 and A5, materializing and loading back."""

import numpy as np
import pytest
import yaml

import movinet
from family import FamilyError, ResolutionEnsemble, registry
from family.registry import load_ensembles
from tests.helpers import randomize_weights, resized_frame_by_frame
from tests.movinet.test_cost import BASE_PARAMS

VIDEO = np.random.default_rng(0).random((1, 2, 32, 32, 3), dtype=np.float32)


def test_the_registry_holds_the_published_models_and_a6():
    assert registry.names() == ["a0", "a1", "a2", "a3", "a4", "a5", "t0", "a6"]
    a6 = registry.describe("a6")
    assert a6["members"] == ["a4", "a5"] and a6["top1"] == 84.8
    assert a6["clips"] == [(120, 290), (120, 320)]
    members = [movinet.cost("a4", frames=120), movinet.cost("a5")]
    assert a6["params"] == sum(c.params for c in members) and a6["macs"] == sum(c.macs for c in members)


@pytest.mark.parametrize("name", ["a0", "a1", "a2", "a3", "a4", "a5", "t0", "a6"])
def test_every_named_model_has_a_row(name):
    """The row's counts are the official ones (A6: its members', checked above); the table shows them."""
    row = registry.describe(name)
    if name != "a6":
        assert row["params"] == BASE_PARAMS[name] and row["macs"] == movinet.cost(name).macs
    line = registry.format_registry([row], "base").splitlines()[-1].split()
    assert line[0] == name and line[-3:] == [f"{row['params'] / 1e6:.2f}", f"{row['macs'] / 1e9:.2f}",
                                              f"{row['top1']:.2f}"]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["base", "stream"])
def test_a6_is_the_mean_of_a4_and_a5_each_at_its_resolution(mode):
    """A6 built in both modes; a tiny video is resized inside to 290 px for A4 and 320 px for A5."""
    model = randomize_weights(registry.build("a6", mode, num_classes=3), seed=0)
    assert model.member_names == ["a4", "a5"] and model.resolutions == [290, 320]
    a4, a5 = model.members
    expected = (a4(resized_frame_by_frame(VIDEO, 290)) + a5(resized_frame_by_frame(VIDEO, 320))).numpy() / 2
    if mode == "base":
        logits = model(VIDEO).numpy()
    else:
        states = model.init_states(VIDEO.shape)
        for t in range(VIDEO.shape[1]):                    # frame by frame
            logits, states = model({**states, "image": VIDEO[:, t:t + 1]})
        assert {name.split("/")[0] for name in states} == {"a4", "a5"}
    assert np.abs(expected).max() > 1e-3
    np.testing.assert_allclose(logits, expected, atol=1e-5)


@pytest.fixture
def small_ensembles(tmp_path):
    path = tmp_path / "ensembles.yaml"
    path.write_text("pair: {kind: resolution, members: [t0, a0]}\n"
                    "twins: {kind: temporal, members: [{name: even, spec: t0}, {name: odd, spec: t0}]}\n")
    return load_ensembles(path)


def test_materialized_ensemble_has_members_in_subfolders_and_loads_back(tmp_path, small_ensembles):
    folder = registry.materialize("pair", tmp_path / "pair", num_classes=3, ensembles=small_ensembles)
    written = yaml.safe_load((folder / "ensemble.yaml").read_text())
    assert written["kind"] == "resolution" and written["resolutions"] == [160, 172]
    assert [m["name"] for m in written["members"]] == ["t0", "a0"]
    assert (folder / "a0" / "spec.yaml").exists() and (folder / "t0" / "options.json").exists()
    loaded = registry.load(folder)
    assert loaded.resolutions == [160, 172] and loaded.mode == "base"
    # The video it is fed (export's and predict's defaults): the longest member's published clip, a0's.
    assert loaded.video_input == movinet.load_spec("a0").input


def test_saved_stream_ensemble_loads_back_with_its_weights(tmp_path, small_ensembles):
    model = randomize_weights(registry.build("twins", "stream", num_classes=3, ensembles=small_ensembles), seed=1)
    loaded = registry.load(registry.save(model, tmp_path / "twins"))
    assert type(loaded) is type(model) and loaded.member_names == ["even", "odd"]
    np.testing.assert_allclose(loaded(VIDEO), model(VIDEO), atol=1e-6)


def test_members_with_different_class_counts_do_not_load(tmp_path):
    three_classes = [movinet.build_model("t0", num_classes=3) for _ in range(2)]
    folder = registry.save(ResolutionEnsemble(three_classes, ["x", "y"], [32, 32]), tmp_path / "pair")
    movinet.checkpoints.save(movinet.build_model("t0", num_classes=5), folder / "y")    # swap in 5 classes
    with pytest.raises(FamilyError, match=r"ensemble.yaml: members\[1\]: y has 5 classes but x has 3"):
        registry.load(folder)


@pytest.mark.parametrize("text, message", [
    ("pair: {kind: bagging, members: [t0, a0]}", "pair.kind: expected one of"),
    ("pair: {kind: temporal, members: [t0]}", "pair.members: expected a list of two or more"),
    ("pair: {kind: temporal, members: [t0, z9]}", "pair.members[1]: unknown model 'z9'"),
])
def test_bad_ensemble_files_name_file_and_field(tmp_path, text, message):
    path = tmp_path / "ensembles.yaml"
    path.write_text(text)
    with pytest.raises(FamilyError) as error:
        load_ensembles(path)
    assert str(error.value).startswith(str(path)) and message in str(error.value)


def test_checkpoints_must_fit_the_model_kind(small_ensembles):
    with pytest.raises(FamilyError, match="give a checkpoint per member"):
        registry.build("pair", ensembles=small_ensembles, checkpoints_by_member="some/path")
    with pytest.raises(FamilyError, match=r"checkpoints for \['a5'\]"):
        registry.build("pair", ensembles=small_ensembles, checkpoints_by_member={"a5": "x"})
    with pytest.raises(FamilyError, match="unknown model 'a9'"):
        registry.build("a9")
    with pytest.raises(FamilyError, match="only a resolution ensemble"):
        registry.build("t0", resolutions=[32])
