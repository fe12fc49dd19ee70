"""Fine-tuning from a checkpoint written by the official implementation, to a new class count."""

import csv

import numpy as np
import pytest

import movinet
from movinet import checkpoints
from movinet.data import DataConfig
from movinet.train import TrainConfig, train
from tests.helpers import FIXTURES


@pytest.mark.slow
def test_fine_tune_from_official_a0_stream_checkpoint_improves_the_loss(tmp_path):
    checkpoint = FIXTURES / "official" / "a0_stream"
    data = DataConfig(source="synthetic", frames=4, resolution=32, batch_size=8, num_classes=3,
                      train_clips=32, val_clips=8, min_area=0.5)
    config = TrainConfig(epochs=4, optimizer="rmsprop", learning_rate=0.01, warmup_fraction=0.0,
                         dropout_rate=0.0, stochastic_depth_drop_rate=0.0, init_checkpoint=str(checkpoint),
                         verbose=0)
    train("a0", "stream", data, config, tmp_path / "run", model_options=dict(norm_momentum=0.9))
    with open(tmp_path / "run" / "history.csv") as handle:
        losses = [float(row["train_loss"]) for row in csv.DictReader(handle)]
    assert len(losses) == 4
    assert losses[-1] < losses[0]

    # The backbone started from the official weights: the checkpoint's stem kernel moved only a little.
    official = movinet.build_model("a0", "stream", num_classes=10)
    checkpoints.load_weights(official, checkpoint)
    tuned = checkpoints.load_model(tmp_path / "run" / "model")
    assert tuned.options.num_classes == 3
    start, end = official.stem.kernel.numpy(), tuned.stem.kernel.numpy()
    assert np.abs(end - start).mean() < 0.5 * np.abs(start).mean()
