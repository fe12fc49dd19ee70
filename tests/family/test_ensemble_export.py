"""Ensembles export like single models: TF Lite and SavedModel, frame by frame, and through the CLI."""

import json

import numpy as np
import pytest

from cli.main import main
from family import ResolutionEnsemble, TemporalEnsemble, registry
from movinet import export, runners
from movinet.spec import InputSpec
from tests.helpers import (RESOLUTION, TINY_SPEC, clips, keras_frame_logits, random_model, saved_model_logits,
                           write_video)

VIDEO = InputSpec(frames=8, resolution=RESOLUTION, fps=5)


def ensemble(kind: str):
    """Two tiny stream members with different weights; a resolution ensemble runs one at 48 px."""
    members = [random_model(TINY_SPEC, seed=k) for k in range(2)]
    if kind == "resolution":
        return ResolutionEnsemble(members, ["small", "full"], resolutions=[48, RESOLUTION], video_input=VIDEO)
    return TemporalEnsemble(members, ["even", "odd"], video_input=VIDEO)


@pytest.mark.slow
@pytest.mark.parametrize("kind, states", [("resolution", "inside"), ("temporal", "inside"), ("temporal", "outside")])
def test_stream_ensemble_tflite_gives_its_keras_logits_frame_by_frame(tmp_path, kind, states):
    model = ensemble(kind)
    runner = runners.TFLiteStreamRunner(export.export_tflite(model, tmp_path / "e.tflite", resolution=RESOLUTION,
                                                             states=states))
    if states == "inside":
        assert runner.keeps_states and set(runner.inputs) == {"image"}
    else:
        assert set(runner.state_names) == set(model.state_shapes((1, 1, RESOLUTION, RESOLUTION, 3)))
    clip = clips(1, frames=7)[0]
    expected = keras_frame_logits(model, clip)
    runs = [np.stack([logits for _, logits in runners.running_logits(runner, clip)]) for _ in range(2)]
    np.testing.assert_array_equal(runs[0], runs[1])     # the second run starts from zero states too
    got = runs[0]
    print(f"\n{kind} stream ensemble, TF Lite float32 vs Keras per frame: max |diff| {np.abs(got - expected).max():.2e}")
    np.testing.assert_allclose(got, expected, atol=1e-4)
    np.testing.assert_allclose(expected[-1], model(clip[None]).numpy()[0], atol=1e-4)


@pytest.mark.slow
def test_stream_ensemble_saved_model_streams_without_the_project(tmp_path):
    model = ensemble("temporal")
    export.export_saved_model(model, tmp_path / "stream", resolution=None)
    clip = clips(1, frames=5)[0]
    reloaded = saved_model_logits({"stream": (tmp_path / "stream", True)}, clip, tmp_path)["stream"]
    gap = np.abs(reloaded - keras_frame_logits(model, clip)).max()
    print(f"\nreloaded temporal-ensemble SavedModel vs Keras, per frame: max |diff| {gap:.2e}")
    assert gap < 1e-4


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    return status, capsys.readouterr().out.splitlines()


@pytest.mark.slow
def test_materialized_ensemble_exports_to_int8_checks_and_predicts(tmp_path, capsys):
    folder = registry.save(ensemble("temporal"), tmp_path / "twins")
    video = write_video(tmp_path / "motion.mp4", (clips(1, frames=8)[0] * 255).astype(np.uint8), fps=5)
    tflite = tmp_path / "twins.tflite"
    status, lines = run_cli(capsys, "export", folder, "--quantize", "int8", "--calibration", video,
                            "--out", tflite, "--check", video)
    assert status == 0 and lines[0] == f"wrote {tflite}"
    assert lines[1].startswith("TF Lite (int8) vs Keras float32 on 1 videos: top-1 agreement")
    assert lines[2].startswith("per frame: Keras ")
    status, lines = run_cli(capsys, "predict", video, "--model", tflite, "--json")
    assert status == 0 and [json.loads(line)["frame"] for line in lines] == list(range(8))
