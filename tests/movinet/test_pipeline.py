"""The pipelined stream runner: the logits of the whole model frame by frame, from stages on threads."""

import threading

import numpy as np
import pytest

from movinet import runners
from movinet.pipeline import PipelinedStreamRunner, balanced_split, layer_weights
from tests.helpers import RESOLUTION, TINY_SPEC, clips, random_model


def sequential_logits(model, clip):
    runner = runners.KerasStreamRunner(model, RESOLUTION)
    return np.stack([runner.step(frame) for frame in clip])


@pytest.mark.parametrize("stages, options", [(2, {}), (3, {"conv_type": "3d"})])
def test_pipelined_run_gives_the_logits_of_the_frame_by_frame_model(stages, options):
    model = random_model(TINY_SPEC, **options)
    clip = clips(1)[0]
    expected = sequential_logits(model, clip)
    runner = PipelinedStreamRunner(model, RESOLUTION, stages=stages)
    assert len(runner.stages) == stages and sum(len(stage.units) for stage in runner.stages) == len(runner.units)
    # Every layer's states live in exactly one stage.
    names = [name for stage in runner.stages for name in stage.states]
    assert sorted(names) == sorted(model.init_states((1, 1, RESOLUTION, RESOLUTION, 3)))
    before = threading.active_count()
    np.testing.assert_allclose(np.stack(list(runner.run(clip))), expected, atol=1e-5)
    assert threading.active_count() == before
    # Two calls continue one video (the states carry over), init_states starts a new one.
    runner.init_states()
    half = len(clip) // 2
    resumed = [*runner.run(clip[:half]), *runner.run(clip[half:])]
    np.testing.assert_allclose(np.stack(resumed), expected, atol=1e-5)
    runner.init_states()
    np.testing.assert_allclose(np.stack([runner.step(frame) for frame in clip]), expected, atol=1e-5)


def test_xla_compiled_stages_match_the_plain_runner():
    model = random_model(TINY_SPEC)
    clip = clips(1)[0]
    runner = PipelinedStreamRunner(model, RESOLUTION, stages=2, jit_compile=True)
    assert "DepthwiseConv2dNative" not in {op.type for stage in runner.stages
                                           for op in stage.step.graph.get_operations()}
    np.testing.assert_allclose(np.stack(list(runner.run(clip))), sequential_logits(model, clip), atol=1e-4)


def test_a_bad_frame_or_an_early_stop_ends_the_threads():
    model = random_model(TINY_SPEC)
    clip = clips(1)[0]
    runner = PipelinedStreamRunner(model, RESOLUTION, stages=2)
    before = threading.active_count()
    frames = [*clip[:3], np.zeros((RESOLUTION + 1, RESOLUTION, 3), np.float32), *clip[3:]]
    seen = []
    with pytest.raises(runners.ExportError, match=rf"frame of shape \[{RESOLUTION + 1}, {RESOLUTION}, 3\]"):
        for logits in runner.run(frames):
            seen.append(logits)
    assert len(seen) == 3 and threading.active_count() == before

    def failing_decoder():
        yield clip[0]
        raise OSError("corrupt packet at 0.4 s")

    with pytest.raises(OSError, match="corrupt packet"):
        list(runner.run(failing_decoder()))
    # A caller that stops early (a generator closed) leaves no thread behind.
    stream = runner.run(iter(clip))
    next(stream)
    stream.close()
    assert threading.active_count() == before


def test_the_split_balances_the_units_and_rejects_bad_ones():
    assert balanced_split([1, 1, 1, 1], 2) == [2]
    assert balanced_split([1, 1, 1, 1, 1, 1], 3) == [2, 4]
    assert balanced_split([100, 1, 1], 3) == [1, 2]       # never an empty stage
    assert balanced_split([5, 1, 1, 1, 1, 1], 2) == [1]
    with pytest.raises(runners.ExportError, match="stages=4"):
        balanced_split([1, 1, 1], 4)
    model = random_model(TINY_SPEC)
    weights = layer_weights(model, RESOLUTION, RESOLUTION)
    assert len(weights) == 1 + len(model.blocks) + 1 and min(weights) > 0
    # A larger frame costs more in every unit.
    assert all(b > a for a, b in zip(weights, layer_weights(model, 2 * RESOLUTION, 2 * RESOLUTION)))
    for split in ([0], [3, 2], [99]):
        with pytest.raises(runners.ExportError, match="split="):
            PipelinedStreamRunner(model, RESOLUTION, stages=1 + len(split), split=split)
    with pytest.raises(runners.ExportError, match="base model"):
        PipelinedStreamRunner(random_model(TINY_SPEC, "base"), RESOLUTION)
