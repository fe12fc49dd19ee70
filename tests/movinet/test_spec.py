"""Spec files: exact YAML round trip for every published model, clear errors for bad ones."""

import pytest
import yaml

import movinet
from movinet.spec import SpecError, dump_spec, specs_dir, spec_from_yaml

NAMES = ["a0", "a1", "a2", "a3", "a4", "a5", "t0"]
LAYERS = {"a0": 15, "a1": 24, "a2": 26, "a3": 33, "a4": 47, "a5": 59, "t0": 14}


@pytest.mark.parametrize("name", NAMES)
def test_yaml_round_trip_is_identical(name):
    text = (specs_dir() / f"{name}.yaml").read_text()
    spec = spec_from_yaml(text, name)
    assert dump_spec(spec) == text
    assert spec.num_layers == LAYERS[name]


def test_named_specs_are_all_published_models():
    assert set(movinet.named_specs()) == set(NAMES)


def test_load_spec_accepts_name_path_and_object(tmp_path):
    spec = movinet.load_spec("a0")
    path = movinet.save_spec(spec.replace(name="mine"), tmp_path / "mine.yaml")
    assert movinet.load_spec(path).blocks == spec.blocks
    assert movinet.load_spec(spec) is spec


def _broken(edit):
    data = yaml.safe_load((specs_dir() / "a0.yaml").read_text())
    edit(data)
    return yaml.safe_dump(data)


@pytest.mark.parametrize("edit, fragment", [
    (lambda d: d.pop("head"), "head: missing"),
    (lambda d: d["blocks"][2]["layers"][1].update(kernel=[3, 3]), "blocks[2].layers[1].kernel"),
    (lambda d: d["blocks"][0]["layers"][0].update(stride=[2, 2, 2]), "temporal stride must be 1"),
    (lambda d: d["blocks"][1].update(filters=0), "blocks[1].filters: expected a positive integer"),
    (lambda d: d["stem"].update(kernels=[1, 3, 3]), "stem: unknown field(s) ['kernels']"),
    (lambda d: d.update(blocks=[]), "blocks: expected a non-empty list"),
])
def test_malformed_spec_names_file_and_field(edit, fragment):
    with pytest.raises(SpecError) as err:
        spec_from_yaml(_broken(edit), source="my_spec.yaml")
    assert "my_spec.yaml" in str(err.value)
    assert fragment in str(err.value)


def test_invalid_yaml_and_unknown_name():
    with pytest.raises(SpecError, match="bad.yaml: not valid YAML"):
        spec_from_yaml("blocks: [", source="bad.yaml")
    with pytest.raises(SpecError, match="unknown model 'a9'"):
        movinet.load_spec("a9")


def test_spec_options_apply_in_every_mode_and_round_trip(tmp_path):
    spec = movinet.load_spec("t0").replace(name="t0-no-se", options={"se_type": "none"})
    path = movinet.save_spec(spec, tmp_path / "t0-no-se.yaml")
    loaded = movinet.load_spec(path)
    assert dump_spec(loaded) == path.read_text()
    assert movinet.resolve_options(loaded, "base").se_type == "none"
    assert movinet.resolve_options(loaded, "stream").se_type == "none"
    assert movinet.resolve_options(loaded, "stream", se_type="2d").se_type == "2d"
    assert movinet.cost(loaded, "base").params < movinet.cost("t0", "base").params


def test_unknown_spec_option_is_named():
    with pytest.raises(SpecError, match=r"s.yaml: options: unknown field\(s\) \['se_kind'\]"):
        spec_from_yaml(_broken(lambda d: d.update(options={"se_kind": "none"})), source="s.yaml")
