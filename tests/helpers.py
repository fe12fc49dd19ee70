"""Helpers shared by the tests: fixture paths and weight randomization."""

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


def randomize_weights(model, seed: int = 0):
    """Gives every path of a model a visible effect: BN statistics, ReZero and PE scales nonzero.

    The kernels keep their He initialisation (scaled) so that activations stay O(1).
    """
    rng = np.random.default_rng(seed)
    for variable in model.weights:
        path = variable.path
        shape = tuple(variable.shape)
        if path.endswith(("moving_variance", "gamma")):
            value = rng.uniform(0.5, 1.5, shape)
        elif path.endswith(("rezero", "scale")):
            value = rng.uniform(0.3, 0.8, shape)
        elif "kernel" in path:
            value = variable.numpy() * 0.7
        else:
            value = rng.normal(0.0, 0.1, shape)
        variable.assign(value.astype("float32"))
    return model
