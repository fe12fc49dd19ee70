import keras
import numpy as np
import pytest
import tensorflow as tf

from movinet import optimizers

SHAPES = [(3, 3, 4, 8), (8,), ()]
SCHEDULE = keras.optimizers.schedules.CosineDecay(0.05, decay_steps=10, warmup_target=0.1, warmup_steps=2)
CASES = [   # (fused class, Keras class, settings, whether a fused kernel serves them)
    (optimizers.FusedRMSprop, keras.optimizers.RMSprop, dict(learning_rate=SCHEDULE, rho=0.9, momentum=0.9,
                                                              epsilon=1.0), True),
    (optimizers.FusedRMSprop, keras.optimizers.RMSprop, dict(learning_rate=0.01, momentum=0.0), False),
    (optimizers.FusedSGD, keras.optimizers.SGD, dict(learning_rate=SCHEDULE, momentum=0.9, nesterov=True), True),
    (optimizers.FusedSGD, keras.optimizers.SGD, dict(learning_rate=0.1, momentum=0.5), True),
    (optimizers.FusedAdam, keras.optimizers.Adam, dict(learning_rate=SCHEDULE), True),
    (optimizers.FusedAdamW, keras.optimizers.AdamW, dict(learning_rate=0.01, weight_decay=0.05), True),
]


def run_steps(optimizer_class, settings, steps=4):
    """Weights after ``steps`` updates with fixed gradients, and the op types of one traced update."""
    rng = np.random.default_rng(0)
    variables = [keras.Variable(rng.normal(size=shape).astype(np.float32)) for shape in SHAPES]
    gradients = [[tf.constant(rng.normal(size=shape).astype(np.float32)) for shape in SHAPES]
                 for _ in range(steps)]
    optimizer = optimizer_class(**settings)
    optimizer.build(variables)
    apply = tf.function(lambda grads: optimizer.apply_gradients(zip(grads, variables)))
    ops = {op.type for op in apply.get_concrete_function(gradients[0]).graph.get_operations()}
    for grads in gradients:
        apply(grads)
    return [v.numpy() for v in variables], ops


@pytest.mark.parametrize("fused, plain, settings, kernel", CASES)
def test_fused_update_equals_the_keras_update(fused, plain, settings, kernel):
    ours, ops = run_steps(fused, settings)
    theirs, _ = run_steps(plain, settings)
    for a, b in zip(ours, theirs):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=5e-6)   # float32, other op order
    moved = sum(not np.allclose(a, b) for a, b in zip(ours, run_steps(plain, settings, steps=1)[0]))
    assert moved, "the updates after one and four steps should differ"
    assert any(name.startswith("ResourceApply") for name in ops) == kernel, sorted(ops)


def test_fused_optimizer_reloads_from_its_config():
    optimizer = optimizers.FusedRMSprop(0.01, rho=0.8, momentum=0.9, epsilon=1.0)
    again = keras.optimizers.deserialize(keras.optimizers.serialize(optimizer))
    assert type(again) is optimizers.FusedRMSprop
    assert (again.rho, again.momentum, again.epsilon) == (0.8, 0.9, 1.0)


def test_a_model_compiled_by_optimizer_name_gets_the_fused_one_built_before_tracing():
    """Keras would build the optimizer inside the traced train step (28 s of slot creation for
    Adam on a t0 here); the model builds it eagerly when the train function is made."""
    import movinet

    model = movinet.build_model("t0", "stream", num_classes=3)
    model.compile(optimizer="Adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    assert type(model.optimizer) is optimizers.FusedAdam
    assert not model.optimizer.built
    model.make_train_function()
    assert model.optimizer.built
    assert len(model.optimizer.variables) >= 2 * len(model.trainable_variables)   # m and v per weight
    given = keras.optimizers.SGD(0.1)
    model.compile(optimizer=given, loss="mse")
    assert model.optimizer is given   # an optimizer object is used as it is


def test_a_compiled_model_reloads_compiled(tmp_path):
    import movinet

    model = movinet.build_model("t0", "base", num_classes=3)
    model.compile(optimizer="rmsprop", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    model.make_train_function()   # builds the optimizer; its state as after 3 steps (no training: tracing is slow)
    model.optimizer.iterations.assign(3)
    for slot in model.optimizer.variables[2:]:
        slot.assign(tf.fill(slot.shape, 0.25))
    model.save(tmp_path / "m.keras")
    again = keras.models.load_model(tmp_path / "m.keras")
    assert type(again.optimizer) is optimizers.FusedRMSprop
    assert isinstance(again.loss, keras.losses.SparseCategoricalCrossentropy)
    assert int(again.optimizer.iterations.numpy()) == 3
    for saved, loaded in zip(model.optimizer.variables, again.optimizer.variables):
        np.testing.assert_array_equal(saved.numpy(), loaded.numpy())
