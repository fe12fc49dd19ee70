"""The built Keras models: counts, shapes, states, streaming equivalence, config round trip."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

import movinet
from movinet.layers import BatchNorm, ConvNorm, FeatureConv, cumulative_mean
from movinet.ops import depthwise_as_taps, depthwise_conv2d, hard_swish, training_hard_swish, worth_fusing
from movinet.model import StateError
from tests.helpers import FIXTURES, TINY_SPEC, randomize_weights

NAMES = ["a0", "a1", "a2", "a3", "a4", "a5", "t0"]
RESOLUTION = {"a0": 172, "a1": 172, "a2": 224, "a3": 256, "a4": 290, "a5": 320, "t0": 160}


def stream_chunks(model, clip, chunks):
    states = model.init_states(clip.shape)
    for chunk in np.array_split(clip, chunks, axis=1):
        logits, states = model({**states, "image": chunk})
    return logits.numpy(), states


@pytest.mark.parametrize("mode", ["base", "stream"])
@pytest.mark.parametrize("name", NAMES)
def test_cost_model_counts_the_built_model(name, mode):
    model = movinet.build_model(name, mode)
    assert model.count_params() == movinet.cost(name, mode).params


@pytest.mark.parametrize("options", [
    dict(conv_type="3d"), dict(conv_type="3d_2plus1d"), dict(se_type="3d", use_positional_encoding=True),
    dict(se_type="2d"), dict(se_type="none"), dict(num_classes=7),
])
def test_cost_model_counts_every_option(options):
    model = movinet.build_model("t0", "stream", **options)
    assert model.count_params() == movinet.cost("t0", "stream", **options).params


def kernel_multiply_adds(model, clip_shape):
    """Multiply-adds of a built stream model, counted from its own kernels and the output
    sizes its endpoints have on a clip: each kernel's size times the positions it is applied
    at (a depthwise kernel [kh, kw, C, 1] makes kh*kw*C per position, a 1x1 conv cin*cout)."""
    endpoints, _ = model.call_endpoints(tf.zeros(clip_shape))
    positions = {name: int(np.prod(value.shape[1:4])) for name, value in endpoints.items()}
    frames = clip_shape[1]
    before = dict(zip([block.name for block in model.blocks], ["stem"] + [b.name for b in model.blocks[:-1]]))
    total = 0
    for variable in model.weights:
        if not variable.path.endswith("kernel"):
            continue
        owner, part = variable.path.split("/")[1:3]
        if owner == "classifier_head":
            at = 1
        elif owner == "head":
            at = positions[model.blocks[-1].name]     # the 1x1 projection comes before the pooling
        elif owner == "stem":
            at = positions["stem"]
        elif part == "expansion":
            at = positions[before[owner]]
        elif part == "se":
            at = frames                               # causal SE: one squeeze per frame
        else:
            at = positions[owner]
        total += int(np.prod(variable.shape)) * at
    return total


@pytest.mark.parametrize("name, options", [("a0", {}), ("a0", dict(conv_type="3d")),
                                           ("t0", dict(conv_type="3d_2plus1d", se_type="3d"))])
def test_cost_model_multiply_adds_count_the_built_stream_models_kernels(name, options):
    """The stream multiply-adds the search's cost window uses, on an odd-sized clip."""
    model = movinet.build_model(name, "stream", num_classes=7, **options)
    expected = kernel_multiply_adds(model, (1, 5, 72, 56, 3))
    assert movinet.cost(name, "stream", frames=5, resolution=(72, 56), num_classes=7, **options).macs == expected


def test_the_other_build_options_take_effect():
    """Each option changes what it should: the pooled head's shape, the SE width (counted by the
    cost model), the BN kind and epsilon, the kernels' initial distribution."""
    clip = np.random.default_rng(9).random((1, 3, 32, 32, 3), dtype=np.float32)
    pooled = {kind: movinet.build_model(TINY_SPEC, "stream", num_classes=3, average_pooling_type=kind)
              for kind in ("3d", "2d", "none")}
    shapes = {kind: tuple(model.call_endpoints(clip)[0]["head"].shape) for kind, model in pooled.items()}
    assert shapes == {"3d": (1, 1, 1, 1, 48), "2d": (1, 3, 1, 1, 48), "none": (1, 3, 4, 4, 48)}
    for model in pooled.values():                 # each streams: its states are those it returns
        states = model.init_states(clip.shape)
        for t in range(2):
            _, states = model({**states, "image": clip[:, t:t + 1]})
        assert set(states) == set(model.init_states(clip.shape))
    assert movinet.cost(TINY_SPEC, "stream", average_pooling_type="2d", frames=3, resolution=32).state_elements == \
        sum(np.prod(shape) for shape, dtype in pooled["2d"].state_shapes(clip.shape).values() if dtype == "float32")
    wide = movinet.build_model(TINY_SPEC, "stream", num_classes=3, se_ratio=0.5)
    assert wide.blocks[0].se.hidden == 2 * pooled["3d"].blocks[0].se.hidden == 32
    assert wide.count_params() == movinet.cost(TINY_SPEC, "stream", num_classes=3, se_ratio=0.5).params
    synced = movinet.build_model(TINY_SPEC, "stream", num_classes=3, use_sync_bn=True, norm_epsilon=0.5)
    norms = [layer for layer in synced._flatten_layers() if isinstance(layer, BatchNorm)]
    assert norms and all(layer.synchronized and layer.epsilon == 0.5 for layer in norms)
    weights = pooled["3d"].get_weights()
    synced.set_weights(weights)
    assert np.abs(synced(clip).numpy() - pooled["3d"](clip).numpy()).max() > 1e-4
    keras.utils.set_random_seed(0)
    uniform = movinet.build_model(TINY_SPEC, "stream", num_classes=3, kernel_initializer="zeros")
    assert not np.any(uniform.blocks[0].expansion.kernel.numpy())
    assert np.any(pooled["3d"].blocks[0].expansion.kernel.numpy())


def test_endpoint_shapes_of_a0():
    model = movinet.build_model("a0")
    endpoints, _ = model.call_endpoints(tf.zeros([1, 8, 128, 128, 3]))
    expected = {"stem": [1, 8, 64, 64, 8], "block0_layer0": [1, 8, 32, 32, 8],
                "block1_layer0": [1, 8, 16, 16, 32], "block2_layer0": [1, 8, 8, 8, 56],
                "block3_layer0": [1, 8, 8, 8, 56], "block4_layer0": [1, 8, 4, 4, 104],
                "head": [1, 1, 1, 1, 480]}
    assert {k: list(endpoints[k].shape) for k in expected} == expected


@pytest.mark.parametrize("name", NAMES)
def test_state_names_and_shapes_match_reference(name):
    reference = json.loads((FIXTURES / "states_stream.json").read_text())[name]
    model = movinet.build_model(name, "stream")
    size = RESOLUTION[name]
    states = model.state_shapes([1, 1, size, size, 3])
    assert list(states) == list(reference)
    assert {k: [list(s), d] for k, (s, d) in states.items()} == reference


def test_stream_states_returned_by_the_model_match_init_states():
    model = movinet.build_model("t0", "stream", num_classes=3)
    states = model.init_states([2, 1, 48, 48, 3])
    _, new_states = model({**states, "image": tf.zeros([2, 3, 48, 48, 3])})
    assert {k: (tuple(v.shape), v.dtype) for k, v in new_states.items()} == \
        {k: (tuple(v.shape), v.dtype) for k, v in states.items()}
    assert int(new_states["state_head_pool_frame_count"][0]) == 3


@pytest.mark.parametrize("name", NAMES)
def test_streaming_equals_whole_clip(name):
    """A clip in 1, 2 and 4 chunks and frame by frame gives the whole-clip logits.

    The largest models skip frame by frame (8 eager steps, half of their time here): chunks of
    2 frames already carry buffers longer than the chunk through their kernels of 5 frames.
    """
    model = randomize_weights(movinet.build_model(name, "stream", num_classes=10), seed=1)
    clip = np.random.default_rng(2).random((1, 8, 40, 40, 3), dtype=np.float32)
    whole = model(clip).numpy()
    assert np.abs(whole).max() > 1e-3
    for chunks in (1, 2, 4) if name in ("a3", "a4", "a5") else (1, 2, 4, 8):
        logits, _ = stream_chunks(model, clip, chunks)
        np.testing.assert_allclose(logits, whole, atol=1e-5, err_msg=f"{chunks} chunks")


def test_pool_buffers_hold_the_mean_of_the_frames_seen():
    """After t frames (t = 1, 3, 7) every SE and head pool buffer is the mean over those t frames
    of its layer's spatially pooled features, computed here with NumPy from the whole clip's
    features: the states stay bounded (a running sum would be t times larger)."""
    model = randomize_weights(movinet.build_model(TINY_SPEC, "stream", num_classes=5), seed=2)
    clip = np.random.default_rng(3).random((2, 7, 32, 32, 3), dtype=np.float32)
    endpoints, _ = model.call_endpoints(clip)
    inputs = ["stem"] + [block.name for block in model.blocks[:-1]]
    pooled = {}                                  # owner -> per-frame spatial means [B, T, C]
    for block, before in zip(model.blocks, inputs):
        features, _ = block.feature(block.expansion(endpoints[before]), {})
        pooled[block.state_prefix] = features.numpy().mean(axis=(2, 3))
    pooled["state_head"] = model.head.project(endpoints[model.blocks[-1].name]).numpy().mean(axis=(2, 3))
    states, seen = model.init_states(clip.shape), 0
    for frames in (1, 2, 4):
        _, states = model({**states, "image": clip[:, seen:seen + frames]})
        seen += frames
        for owner, per_frame in pooled.items():
            buffer = states[f"{owner}_pool_buffer"].numpy()[:, 0, 0, 0]
            np.testing.assert_allclose(buffer, per_frame[:, :seen].mean(axis=1), rtol=1e-5, atol=1e-6,
                                       err_msg=f"{owner} after {seen} frames")
            assert int(states[f"{owner}_pool_frame_count"][0]) == seen


def test_a_long_stream_keeps_its_pool_buffer_at_the_mean():
    """500 frames in chunks of 50, 7 and 1 (a stream step): the buffer is the mean of every frame so
    far, a running sum would reach 500 times it."""
    per_frame = np.random.default_rng(4).normal(1.0, 0.5, (1, 500, 1, 1, 3)).astype(np.float32)
    states, seen = {}, 0
    while seen < 500:
        frames = 50 if seen % 100 == 0 else 1 if seen % 3 else 7
        chunk = per_frame[:, seen:seen + frames]
        means, states = cumulative_mean(tf.constant(chunk), states, "state_head", causal=True)
        expected = np.cumsum(per_frame[:, :seen + chunk.shape[1]], axis=1, dtype=np.float64)
        expected /= np.arange(1, seen + chunk.shape[1] + 1).reshape(1, -1, 1, 1, 1)
        np.testing.assert_allclose(means.numpy(), expected[:, seen:], rtol=1e-5)
        seen += chunk.shape[1]
        np.testing.assert_allclose(states["state_head_pool_buffer"].numpy(), expected[:, -1:], rtol=1e-5)
        assert int(states["state_head_pool_frame_count"][0]) == seen


def test_an_int8_graph_weighs_frames_past_its_table_as_a_moving_average():
    """In ``int8_graph`` a stream step's weight comes from a table of 1 / (count + 1): exact for the
    first RUNNING_MEAN_FRAMES frames, then 1 / RUNNING_MEAN_FRAMES (no count of an int8 range)."""
    from movinet.ops import RUNNING_MEAN_FRAMES, int8_graph

    total = RUNNING_MEAN_FRAMES + 100
    per_frame = np.random.default_rng(5).normal(1.0, 0.5, (1, total, 1, 1, 3)).astype(np.float32)
    expected, mean = [], np.zeros((1, 1, 1, 1, 3))
    for index in range(total):
        mean = mean + (per_frame[:, index:index + 1] - mean) / min(index + 1, RUNNING_MEAN_FRAMES)
        expected.append(mean)
    states = {}
    with int8_graph():
        step = tf.function(lambda frame, states: cumulative_mean(frame, states, "state_head", causal=True))
        for index in range(total):
            means, states = step(tf.constant(per_frame[:, index:index + 1]), states)
            np.testing.assert_allclose(means.numpy(), expected[index], rtol=1e-5, err_msg=f"frame {index}")
    assert int(states["state_head_pool_frame_count"][0]) == total


@pytest.mark.parametrize("options", [
    dict(conv_type="3d"), dict(se_type="3d", use_positional_encoding=True), dict(se_type="2d"),
    dict(se_type="none"), dict(activation="swish", gating_activation="sigmoid"),
])
def test_streaming_equals_whole_clip_for_every_stream_option(options):
    model = randomize_weights(movinet.build_model("a0", "stream", num_classes=5, **options), seed=3)
    clip = np.random.default_rng(4).random((2, 6, 36, 36, 3), dtype=np.float32)
    whole = model(clip).numpy()
    for chunks in (2, 6):
        np.testing.assert_allclose(stream_chunks(model, clip, chunks)[0], whole, atol=1e-5)


def test_streaming_is_causal():
    """Logits after frame t do not depend on later frames."""
    model = randomize_weights(movinet.build_model("a0", "stream", num_classes=5), seed=5)
    clip = np.random.default_rng(6).random((1, 6, 32, 32, 3), dtype=np.float32)
    changed = clip.copy()
    changed[:, 4:] = 0.0
    np.testing.assert_allclose(model(clip[:, :4]).numpy(), model(changed[:, :4]).numpy(), atol=1e-6)
    assert np.abs(model(clip).numpy() - model(changed).numpy()).max() > 1e-4


def test_base_model_is_not_causal():
    """In a base model the first frame's features depend on the last frame (SE 3d, 'same' padding)."""
    model = randomize_weights(movinet.build_model("a0", "base", num_classes=5), seed=7)
    clip = np.random.default_rng(8).random((1, 6, 32, 32, 3), dtype=np.float32)
    changed = clip.copy()
    changed[:, -1] = 0.0
    first = model.call_endpoints(clip)[0]["block4_layer0"][:, 0]
    first_changed = model.call_endpoints(changed)[0]["block4_layer0"][:, 0]
    assert np.abs((first - first_changed).numpy()).max() > 1e-4


def test_config_round_trip_keeps_every_option():
    model = movinet.build_model("t0", "stream", num_classes=4, se_type="2d", gating_activation="sigmoid",
                                average_pooling_type="3d", classifier_activation="hard_swish",
                                conv_type="3d", dropout_rate=0.3, stochastic_depth_drop_rate=0.1,
                                kernel_l2=1e-5)
    randomize_weights(model, seed=9)
    clone = movinet.MovinetClassifier.from_config(model.get_config())
    clone.build()
    assert clone.options == model.options and clone.spec == model.spec
    clone.set_weights(model.get_weights())
    clip = np.random.default_rng(10).random((1, 4, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(clone(clip).numpy(), model(clip).numpy(), atol=1e-6)


def test_keras_file_round_trip(tmp_path):
    model = randomize_weights(movinet.build_model("t0", "stream", num_classes=3), seed=11)
    path = tmp_path / "t0.keras"
    model.save(path)
    restored = keras.models.load_model(path)
    clip = np.random.default_rng(12).random((1, 3, 32, 32, 3), dtype=np.float32)
    np.testing.assert_allclose(restored(clip).numpy(), model(clip).numpy(), atol=1e-6)
    assert restored.options == model.options


def test_bad_state_dicts_are_named():
    model = movinet.build_model("a0", "stream", num_classes=3)
    states = model.init_states([1, 1, 32, 32, 3])
    frame = tf.zeros([1, 1, 32, 32, 3])
    missing = dict(states)
    del missing["state_block1_layer0_stream_buffer"]
    with pytest.raises(StateError, match="missing.*state_block1_layer0_stream_buffer"):
        model({**missing, "image": frame})
    wrong = dict(states, state_head_pool_buffer=tf.zeros([1, 1, 1, 1, 7]))
    with pytest.raises(StateError, match=r"state_head_pool_buffer has shape \[1, 1, 1, 1, 7\]"):
        model({**wrong, "image": frame})
    for unbuilt in (False, True):   # a first call builds the model from the inputs' shapes
        called = movinet.build_model("a0", "stream", num_classes=3) if unbuilt else model
        with pytest.raises(StateError, match=r"a0: the inputs hold \d+ states but no \"image\""):
            called(states)
    with pytest.raises(StateError, match="base"):
        movinet.build_model("t0", "base")({**movinet.build_model("t0", "stream").init_states(
            [1, 1, 32, 32, 3]), "image": frame})


def test_training_step_updates_a_stream_model():
    """Stream models train on whole clips with zero initial states (no external states needed)."""
    model = movinet.build_model("t0", "stream", num_classes=3, dropout_rate=0.2, stochastic_depth_drop_rate=0.2)
    # SGD, the cheapest update to trace (Adam's adds ~5 s to this test).
    model.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    clips = np.random.default_rng(13).random((4, 4, 32, 32, 3), dtype=np.float32)
    before = [w.numpy().copy() for w in model.trainable_weights]
    model.fit(clips, np.array([0, 1, 2, 0]), epochs=1, batch_size=2, verbose=0)
    changed = sum(not np.array_equal(b, w.numpy()) for b, w in zip(before, model.trainable_weights))
    assert changed > len(before) // 2


def test_stochastic_depth_drops_whole_samples_at_the_linearly_growing_rate():
    """The official rule: layer i of n drops its residual branch with rate * i / n; a dropped sample
    loses all of it, a kept one is scaled by 1 / (1 - rate); inference keeps everything."""
    model = movinet.build_model(TINY_SPEC, "stream", num_classes=3, stochastic_depth_drop_rate=0.3)
    rates = [block.stochastic_depth.rate for block in model.blocks]
    assert rates == pytest.approx([0.3 * i / 3 for i in (1, 2, 3)])
    layer = model.blocks[-1].stochastic_depth
    ones = tf.ones([2000, 2, 2, 2, 3])
    dropped = layer(ones, training=True).numpy().reshape(2000, -1)
    kept = dropped[:, 0] > 0
    np.testing.assert_allclose(dropped[kept], 1 / 0.7, rtol=1e-6)
    np.testing.assert_array_equal(dropped[~kept], 0.0)
    assert abs((~kept).mean() - 0.3) < 0.05              # 7 standard deviations of 2000 draws
    np.testing.assert_array_equal(layer(ones, training=False), ones)


def test_dropout_acts_on_the_classifier_while_training_only():
    """Training calls differ from each other; inference gives the logits of the same weights built
    without dropout."""
    model = randomize_weights(movinet.build_model(TINY_SPEC, "base", num_classes=3, dropout_rate=0.5))
    plain = movinet.build_model(TINY_SPEC, "base", num_classes=3)
    plain.set_weights(model.get_weights())
    features = tf.random.stateless_uniform([8, 1, 1, 1, TINY_SPEC.head.project_filters], [4, 5])
    trained = [model.classifier(features, training=True).numpy() for _ in range(2)]
    assert np.abs(trained[0] - trained[1]).max() > 1e-3
    np.testing.assert_allclose(model.classifier(features, training=False), plain.classifier(features), atol=1e-6)


def test_regularizers_follow_the_official_placement():
    """L2 on every conv kernel but the classifier's; bias L2 only when asked."""
    plain = movinet.build_model("t0", "base", num_classes=3)
    assert not plain.losses
    model = movinet.build_model("t0", "base", num_classes=3, kernel_l2=1e-4)
    kernels = [w for w in model.trainable_weights if "kernel" in w.path]
    assert len(model.losses) == len(kernels) - 1
    with_bias = movinet.build_model("t0", "base", num_classes=3, kernel_l2=1e-4, bias_l2=1e-4)
    biases = [w for w in with_bias.trainable_weights if w.path.endswith("bias")]
    assert len(with_bias.losses) == len(kernels) - 1 + len(biases)


@pytest.mark.parametrize("mode, options", [
    ("base", {}), ("stream", {}), ("stream", dict(conv_type="3d", use_positional_encoding=True)),
    ("stream", dict(se_type="2d", activation="swish")),
])
def test_folded_batch_norm_gives_the_same_outputs_and_states(mode, options):
    model = randomize_weights(movinet.build_model("a0", mode, num_classes=5, **options), seed=21)
    folded = movinet.fold_batch_norm(model)
    convolutions = [layer for layer in folded._flatten_layers() if isinstance(layer, ConvNorm) or
                    (isinstance(layer, FeatureConv) and not (layer.separable and layer.kernel_t == 1))]
    assert convolutions and all(layer.folded is not None for layer in convolutions)
    clip = np.random.default_rng(22).random((2, 4, 40, 40, 3), dtype=np.float32)
    np.testing.assert_allclose(folded(clip).numpy(), model(clip).numpy(), atol=1e-5)
    if mode == "stream":
        logits, states = stream_chunks(model, clip, 4)
        folded_logits, folded_states = stream_chunks(folded, clip, 4)
        np.testing.assert_allclose(folded_logits, logits, atol=1e-5)
        for name, value in states.items():
            np.testing.assert_allclose(folded_states[name].numpy(), value.numpy(), atol=1e-5, err_msg=name)
    with pytest.raises(movinet.FoldedError, match="folded"):
        folded(clip, training=True)


@pytest.mark.parametrize("shape", [(1, 86, 86, 8), (2, 43, 43, 5), (1, 6, 7, 3), (1, 12, 12, 2)])
def test_the_int8_average_pool_is_tensorflows_with_padding_left_out(shape):
    """The int8 graph's skip pool (a depthwise conv and a border map) against tf.nn.avg_pool2d, and
    against a mean over each window's positions inside the input computed here."""
    from movinet.ops import average_pool, int8_graph

    x = np.random.default_rng(24).normal(size=shape).astype(np.float32)
    with int8_graph():
        got = average_pool(tf.constant(x), 3, 2).numpy()
    np.testing.assert_allclose(got, tf.nn.avg_pool2d(x, 3, 2, "SAME").numpy(), atol=1e-6)
    height, width = shape[1:3]
    top, left = (max((-(-height // 2) - 1) * 2 + 3 - height, 0) // 2, max((-(-width // 2) - 1) * 2 + 3 - width, 0) // 2)
    for i, j in [(0, 0), (got.shape[1] - 1, got.shape[2] - 1), (got.shape[1] // 2, 0)]:
        rows = slice(max(2 * i - top, 0), max(2 * i - top + 3, 0))
        cols = slice(max(2 * j - left, 0), max(2 * j - left + 3, 0))
        np.testing.assert_allclose(got[:, i, j], x[:, rows, cols].mean(axis=(1, 2)), atol=1e-6, err_msg=f"({i}, {j})")


def sixth_multiplies(model, clip) -> int:
    """Multiplications by hard_swish's 1/6 in one stream step of ``model`` (its traced graph)."""
    states = model.init_states(list(clip.shape))
    graph = tf.function(lambda: model({**states, "image": tf.constant(clip)})).get_concrete_function().graph
    constants = {op.outputs[0].name: op.get_attr("value") for op in graph.get_operations() if op.type == "Const"}
    sixths = 0
    for op in graph.get_operations():
        if op.type == "Mul":
            values = [tf.make_ndarray(constants[x.name]) for x in op.inputs if x.name in constants]
            sixths += any(v.size == 1 and abs(float(v) - 1 / 6) < 1e-6 for v in values)
    return sixths


@pytest.mark.parametrize("options", [{}, dict(conv_type="3d"), dict(se_type="3d", use_positional_encoding=True)])
def test_folding_with_scaled_states_moves_every_hard_swish_sixth_and_keeps_the_logits(options):
    """``scale_states`` lets the factors that stream states hold move too: no 1/6 multiply is left
    where no positional encoding is added after a pool (A0 stream: 58 unfolded, 27 folded without
    it), the logits stay those of the model, and the states differ from the model's (they hold
    scaled values)."""
    model = randomize_weights(movinet.build_model("a0", "stream", num_classes=5, **options), seed=21)
    clip = np.random.default_rng(22).random((1, 1, 40, 40, 3), dtype=np.float32)
    plain, scaled = movinet.fold_batch_norm(model), movinet.fold_batch_norm(model, scale_states=True)
    assert sixth_multiplies(plain, clip) > 0
    left = sixth_multiplies(scaled, clip)
    assert left == 0 if "use_positional_encoding" not in options else 0 < left < sixth_multiplies(plain, clip)
    frames = np.random.default_rng(23).random((1, 5, 40, 40, 3), dtype=np.float32)
    logits, states = stream_chunks(model, frames, 5)                  # frame by frame
    scaled_logits, scaled_states = stream_chunks(scaled, frames, 5)
    np.testing.assert_allclose(scaled_logits, logits, atol=1e-5)
    assert any(not np.allclose(scaled_states[name].numpy(), value.numpy(), atol=1e-3) for name, value in states.items())


@pytest.mark.parametrize("shape", [(2, 3, 5, 5, 7), (4, 6, 6, 7)])
def test_fused_batch_norm_trains_like_the_keras_layer(shape):
    """Same outputs, gradients and moving statistics as keras BatchNormalization (biased variance)."""
    x = tf.constant(np.random.default_rng(23).normal(1.0, 3.0, shape).astype(np.float32))
    layers = [keras.layers.BatchNormalization(momentum=0.9), BatchNorm(momentum=0.9)]
    results = []
    for layer in layers:
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, shape[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, shape[-1]))
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = layer(x, training=True)
            loss = tf.reduce_sum(y * y * tf.range(shape[-1], dtype=tf.float32))
        grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
        results.append([y, *grads, layer.moving_mean, layer.moving_variance, layer(x)])
    for keras_value, fused_value in zip(*results):
        np.testing.assert_allclose(np.asarray(fused_value), np.asarray(keras_value), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("dtype", [tf.float32, tf.float16])
def test_fused_training_hard_swish_matches_the_plain_ops(dtype):
    """Values and gradients of the XLA-fused hard_swish equal autodiff through the plain ops,
    at the kinks (-3, 3) too, where Relu6's gradient takes its closed bounds."""
    x = tf.constant(np.concatenate([np.linspace(-5, 5, 41), [-3.0, 3.0, -3.0001, 2.9999]]), dtype)
    weights = tf.cast(tf.range(x.shape[0]) % 7 - 3, dtype)
    results = []
    for act in (hard_swish, training_hard_swish):
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = act(x)
            loss = tf.reduce_sum(y * weights)
        results.append((y, tape.gradient(loss, x)))
    tolerance = 1e-6 if dtype == tf.float32 else 1e-2
    for plain, fused in zip(*results):
        assert fused.dtype == dtype
        np.testing.assert_allclose(fused.numpy().astype(np.float64), plain.numpy().astype(np.float64),
                                   atol=tolerance, rtol=tolerance)


def test_training_uses_the_fused_hard_swish_on_large_activations_only(monkeypatch):
    monkeypatch.setenv("MOVINET_NATIVE", "0")   # the XLA kernels (test_native.py covers the native ones)
    model = movinet.build_model("a0", "stream", num_classes=3)
    clip = tf.random.uniform([1, 4, 128, 128, 3])
    sizes = []
    counting = lambda x: sizes.append(np.prod(x.shape)) or worth_fusing(x)  # noqa: E731
    monkeypatch.setattr(movinet.ops, "worth_fusing", counting)      # activations
    monkeypatch.setattr(movinet.layers, "worth_fusing", counting)   # batch norm with hard_swish
    called = {}
    for training in (True, False):
        graph = tf.function(lambda x: model(x, training=training)).get_concrete_function(clip).graph
        called[training] = [op.get_attr("f").name for op in graph.get_operations()
                            if op.type in ("PartitionedCall", "StatefulPartitionedCall")]
    large = sum(size >= 2 ** 18 for size in sizes)
    assert 0 < large < len(sizes)     # at 4x128x128 block0's expansion is large, the SE tensors are not
    fused = [name for name in called[True] if "_fused_hard_swish" in name or "_normalize_hard_swish" in name]
    assert len(fused) == large
    assert any("_normalize_hard_swish" in name for name in fused)     # batch norm and hard_swish in one
    assert not any("hard_swish" in name for name in called[False])
    # Only the known dimensions count: with the batch dynamic, the size of one example.
    assert worth_fusing(keras.Input((4, 128, 128, 24))) and not worth_fusing(tf.zeros([2, 4, 8, 8, 24]))


@pytest.mark.parametrize("native_kernels", ["1", "0"])
@pytest.mark.parametrize("shape", [(2, 3, 5, 5, 7), (64, 6)])
def test_batch_norm_fused_with_hard_swish_trains_like_the_two_layers(shape, native_kernels, monkeypatch):
    """BatchNorm.hard_swish_after, by the native kernels and by the XLA ones: the outputs, the
    gradients of input, gamma and beta, and the moving statistics of keras BatchNormalization
    followed by hard_swish."""
    monkeypatch.setenv("MOVINET_NATIVE", native_kernels)
    monkeypatch.setattr(movinet.ops, "FUSE_MIN_ELEMENTS", 1)
    rng = np.random.default_rng(5)
    x = tf.constant(rng.normal(1.0, 3.0, shape).astype(np.float32))
    weights = tf.constant(rng.normal(size=shape).astype(np.float32))
    results = []
    for fused in (False, True):
        layer = keras.layers.BatchNormalization(momentum=0.9) if not fused else BatchNorm(momentum=0.9)
        layer.build(shape)
        layer.gamma.assign(np.linspace(0.5, 1.5, shape[-1]))
        layer.beta.assign(np.linspace(-1.0, 1.0, shape[-1]))
        with tf.GradientTape() as tape:
            tape.watch(x)
            if fused:
                assert layer.fuses_hard_swish(x, training=True) and not layer.fuses_hard_swish(x, training=False)
                y = layer.hard_swish_after(x)
            else:
                y = hard_swish(layer(x, training=True))
            loss = tf.reduce_sum(y * weights)
        results.append([y, *tape.gradient(loss, [x, layer.gamma, layer.beta]), layer.moving_mean,
                        layer.moving_variance])
    for plain, fused in zip(*results):
        np.testing.assert_allclose(np.asarray(fused), np.asarray(plain), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("size, kernel, stride", [((9, 9), (5, 5), 2), ((8, 7), (5, 5), 1), ((6, 6), (3, 3), 1)])
def test_depthwise_training_gradient_is_tfs(size, kernel, stride, monkeypatch):
    """Without the native kernels (their own test: tests/movinet/test_native.py), a 5x5 depthwise
    conv in training takes its filter gradient from TF's kernel (explicit padding); the gradients
    equal the plain op's, and inference keeps the plain op."""
    monkeypatch.setenv("MOVINET_NATIVE", "0")
    rng = np.random.default_rng(2)
    x = tf.constant(rng.normal(size=(3, *size, 4)), tf.float32)
    weights = tf.constant(rng.normal(size=(*kernel, 4, 1)), tf.float32)
    strides = [1, stride, stride, 1]
    results = []
    for training in (False, True):
        with tf.GradientTape() as tape:
            tape.watch([x, weights])
            y = depthwise_conv2d(x, weights, strides, "SAME", training=training)
            loss = tf.reduce_sum(y * tf.cos(y))
        results.append([y, *tape.gradient(loss, [x, weights])])
    for plain, custom in zip(*results):
        np.testing.assert_allclose(custom.numpy(), plain.numpy(), rtol=1e-5, atol=1e-5)

    def gradient(x, weights):
        with tf.GradientTape() as tape:
            tape.watch(weights)
            y = depthwise_conv2d(x, weights, strides, "SAME", training=True)
        return tape.gradient(y, weights)

    graph = tf.function(gradient).get_concrete_function(x, weights).graph
    paddings = [op.get_attr("padding") for op in graph.get_operations()
                if op.type == "DepthwiseConv2dNativeBackpropFilter"]
    assert paddings == ([b"EXPLICIT"] if kernel == (5, 5) else [b"SAME"])


@pytest.mark.parametrize("size, kernel, stride, padding", [
    ((7, 7), (3, 3), 1, "SAME"), ((7, 8), (3, 3), 2, "SAME"), ((8, 8), (5, 5), 2, "SAME"),
    ((6, 5), (3, 1), 1, "VALID"), ((6, 5), (3, 1), 1, [[0, 0], [2, 0], [0, 0], [0, 0]]),
    ((9, 9), (1, 5), 2, "SAME"),
])
def test_depthwise_as_taps_is_tfs_depthwise_convolution(size, kernel, stride, padding):
    rng = np.random.default_rng(0)
    x = tf.constant(rng.normal(size=(2, *size, 4)), tf.float32)
    weights = tf.constant(rng.normal(size=(*kernel, 4, 1)), tf.float32)
    strides = [1, stride, stride, 1]
    expected = tf.nn.depthwise_conv2d(x, weights, strides, padding)
    with depthwise_as_taps():
        taps = depthwise_conv2d(x, weights, strides, padding)
    assert taps.shape == expected.shape
    np.testing.assert_allclose(taps.numpy(), expected.numpy(), atol=1e-5)
