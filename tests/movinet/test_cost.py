"""The cost model against the official parameter counts and the reference multiply-adds."""

import math

import pytest

import movinet
from movinet.cost import LayerCost, make_divisible

# Official count_params() with 600 classes (tf-models-official 2.20, BN statistics included).
BASE_PARAMS = {"a0": 3_126_071, "a1": 4_717_912, "a2": 5_280_922, "a3": 7_443_289, "a4": 11_422_727,
               "a5": 18_763_355, "t0": 1_740_502}
STREAM_PARAMS = {"a0": 3_765_983, "a1": 6_481_560, "a2": 7_366_050, "a3": 11_043_146, "a4": 18_228_326,
                 "a5": 31_636_734, "t0": 2_385_118}
# Reference multiply-adds of base models at the published inputs (convs, SE, classifier), with the
# reference's own digits: the count must round to them.
BASE_GMACS = {"a0": "2.631", "a1": "5.866", "a2": "11.558", "a3": "55.59", "a4": "103.34", "a5": "276.33"}


@pytest.mark.parametrize("name", sorted(BASE_PARAMS))
def test_base_parameter_count_is_official(name):
    assert movinet.cost(name, "base").params == BASE_PARAMS[name]


@pytest.mark.parametrize("name", sorted(STREAM_PARAMS))
def test_stream_parameter_count_is_official(name):
    assert movinet.cost(name, "stream").params == STREAM_PARAMS[name]


@pytest.mark.parametrize("name", sorted(BASE_GMACS))
def test_base_multiply_adds_match_reference(name):
    """To the reference's last digit (1e-4 of A0's count): leaving A0's classifier out (0.084%) fails."""
    reference = BASE_GMACS[name]
    digits = len(reference.split(".")[1])
    assert f"{movinet.cost(name, 'base').macs / 1e9:.{digits}f}" == reference


def test_stream_positional_encoding_defaults_follow_the_official_yamls():
    assert [movinet.resolve_options(movinet.load_spec(n), "stream").use_positional_encoding
            for n in ("a0", "a1", "a2", "a3", "a4", "a5", "t0")] == [False] * 3 + [True] * 3 + [False]


def test_make_divisible_matches_official_rule():
    assert make_divisible(0.25 * 24) == 8
    assert make_divisible(0.25 * 184) == 48
    assert make_divisible(0.5 * 184) == 96
    assert make_divisible(0.25 * 168) == 40   # 42 -> 40 (within 10%)
    assert make_divisible(0.5 * 168) == 88    # 84 -> 88


def test_macs_scale_with_clip_and_state_does_not():
    one = movinet.cost("a0", "stream", frames=1, resolution=172)
    many = movinet.cost("a0", "stream", frames=50, resolution=172)
    classifier = 480 * 2048 + 2048 * 600
    assert many.macs - classifier == 50 * (one.macs - classifier)
    assert many.state_bytes == one.state_bytes
    assert one.state_elements == 674_192          # reference inventory, a0 at 172


def test_the_classifier_is_counted_once_per_pooled_vector():
    """With average_pooling_type '2d' the classifier runs on each frame's pooled vector, with 'none'
    on every position of the last feature map (172 px: 86, 43, 22, 11, 6 after five stride-2 stages)."""
    classifier = 480 * 2048 + 2048 * 600
    clip = movinet.cost("a0", "base", frames=8, resolution=172).macs
    per_frame = movinet.cost("a0", "base", frames=8, resolution=172, average_pooling_type="2d").macs
    per_position = movinet.cost("a0", "base", frames=8, resolution=172, average_pooling_type="none").macs
    assert per_frame - clip == (8 - 1) * classifier
    assert per_position - clip == (8 * 6 * 6 - 1) * classifier


@pytest.mark.parametrize("conv_type", ["2plus1d", "3d_2plus1d", "3d"])
@pytest.mark.parametrize("name", sorted(STREAM_PARAMS))
def test_state_size_matches_state_shapes(name, conv_type):
    """cost() counts exactly the stream states state_shapes() names (pre-stride buffers in 3D)."""
    result = movinet.cost(name, "stream", frames=8, resolution=(100, 76), conv_type=conv_type)
    shapes = movinet.state_shapes(name, result.options, 1, 100, 76).values()
    assert result.state_elements == sum(math.prod(shape) for shape, dtype in shapes if dtype == "float32")
    assert sum(layer.state_counters for layer in result.layers) == sum(dtype == "int32" for _, dtype in shapes)
    assert all(len(layer) == len(LayerCost._fields) for layer in result.layers)


def test_options_resolve_from_each_call_settings():
    """Remembered options still follow the spec's own stream/options fields and each value's type."""
    spec = movinet.load_spec("a0")
    in_stream = spec.replace(stream={**spec.stream, "se_type": "none"})
    in_options = spec.replace(options={"se_type": "none"})
    for s in (spec, in_stream, in_options, spec):
        for mode in ("base", "stream"):
            assert movinet.cost(s, mode).options == movinet.resolve_options(s, mode)
    assert movinet.cost(spec, "base", num_classes=1).options.num_classes == 1
    with pytest.raises(ValueError, match="num_classes"):
        movinet.cost(spec, "base", num_classes=True)


@pytest.mark.parametrize("flag, value", [("--frames", "0"), ("--resolution", "0"), ("--frames", "-3")])
def test_info_of_a_clip_of_no_frames_or_pixels_is_an_error(flag, value, capsys):
    from cli.main import main

    assert main(["info", "t0", flag, value]) == 2
    assert capsys.readouterr().err == f"movinet info: error: {flag[2:]}={value}: expected a positive number\n"
