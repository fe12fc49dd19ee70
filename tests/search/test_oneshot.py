"""One-shot search core: settings, exact in-graph cost, zero gradients of unsampled branches,
cost-targeted searches on the synthetic motion set, and resume."""

import copy
import random
import re
import statistics

import numpy as np
import pytest

from search.candidate import candidate_macs, decode
from search.space import SpaceError, space_from_dict

SPACE = {
    "name": "oneshot_test",
    "space": {
        "input": {"resolution": [16], "frames": [4]},
        "stem": {"filters": [8, 16]},
        "blocks": [
            # stride 1 and widths shared with the stem: the first layer's skip is an identity or a projection
            {"filters": [8, 16], "depth": [1, 2], "stride": 1, "expand_ratio": [2.0, 4.0],
             "kernel": [[1, 3, 3], [3, 3, 3], [5, 3, 3]]},
            {"filters": [16, 24, 32], "depth": [1, 3], "stride": 2, "expand_ratio": [2.0, 4.0],
             "kernel": [[1, 3, 3], [3, 3, 3]], "layers": [{"expand": [32, 64]}]},
        ],
        "head": {"project_filters": [32, 64], "head_filters": [32, 64]},
        "options": {"se_type": ["2plus3d", "none"]},
    },
    "objective": {"target_macs": 1.2e6, "window": 0.05, "beta": -1.0},
    "data": {"source": "synthetic", "num_classes": 4, "train_clips": 256, "val_clips": 64, "batch_size": 8},
    "budget": {"epochs": 1, "optimizer": "adam", "learning_rate": 0.01},
    "search": {"algorithm": "oneshot", "seed": 0},
    "oneshot": {"steps": 300, "controller_learning_rate": 0.3, "log_every": 10, "checkpoint_every": 100},
}


def make_space(source="oneshot_test.yaml", **sections):
    """SPACE with whole sections replaced."""
    return space_from_dict({**copy.deepcopy(SPACE), **sections}, source=source)


def median_macs(space, samples=500) -> float:
    rng = random.Random(0)
    return statistics.median(candidate_macs(space, decode(space, space.sample(lambda p: rng.choice(p.choices))))
                             for _ in range(samples))


@pytest.mark.parametrize("section, field", [
    ({"oneshot": {"steps": 0}}, "oneshot.steps"),
    ({"oneshot": {"epochs": -1}}, "oneshot.epochs"),
    ({"oneshot": {"rl_delay": 0.2, "op_warmup": 0.3}}, "oneshot.op_warmup"),
    ({"oneshot": {"rl_delay": 0.1, "filter_warmup": 0.2}}, "oneshot.filter_warmup"),
    ({"oneshot": {"stepz": 10}}, "oneshot: unknown field(s) ['stepz']"),
    ({"oneshot": {"optimizer": "lion"}}, "oneshot.optimizer"),
    ({"search": {"algorithm": "oneshot", "workers": 0}}, "search.workers"),
])
def test_bad_oneshot_settings_name_the_file_and_field(section, field):
    from search.oneshot.settings import oneshot_settings

    with pytest.raises(SpaceError, match="^" + re.escape(f"bad.yaml: {field}")):
        oneshot_settings(make_space("bad.yaml", **section))


def test_a_space_with_nothing_to_choose_is_refused_before_training():
    from search.oneshot.settings import oneshot_settings

    fixed = {"input": {"resolution": [16, 24], "frames": [4]}, "stem": {"filters": [8]},
             "blocks": [{"filters": [8], "depth": 1, "stride": 1, "expand": [16], "kernel": [[3, 3, 3]]}],
             "head": {"project_filters": [32], "head_filters": [32]}}
    with pytest.raises(SpaceError, match=r"^fixed\.yaml: space: nothing to choose"):
        oneshot_settings(make_space("fixed.yaml", space=fixed))
    searched_stride = copy.deepcopy(SPACE["space"])
    searched_stride["blocks"][1]["stride"] = [1, 2]
    with pytest.raises(SpaceError, match=r"^s\.yaml: space\.blocks\[1\]\.stride: a one-shot search keeps"):
        oneshot_settings(make_space("s.yaml", space=searched_stride))


def test_oneshot_settings_defaults_follow_tunas():
    from search.oneshot.settings import oneshot_settings

    settings = oneshot_settings(make_space(oneshot={"steps": 1000}))
    assert (settings.rl_delay, settings.op_warmup, settings.filter_warmup) == (0.25, 0.25, 0.25)
    assert settings.baseline_momentum == 0.95 and settings.validation_batch_multiple == 4
    assert settings.controller_rate(global_batch=512) == pytest.approx(3e-4 * 2)


@pytest.mark.parametrize("conv_type", ["2plus1d", "3d"])
def test_in_graph_cost_equals_movinet_cost_of_the_materialized_spec(conv_type):
    import tensorflow as tf

    from search.oneshot.controller import Controller
    from search.oneshot.costs import cost_terms, graph_macs
    from search.oneshot.settings import input_settings

    space = make_space(space={**SPACE["space"], "options": {"se_type": ["2plus3d", "none"],
                                                           "conv_type": [conv_type]}})
    setting = input_settings(space)[0]
    controller = Controller(space)
    terms = cost_terms(space, setting)
    seen = set()
    for step in range(50):
        # Widest-width replacement in a third of the samples reaches the space's largest widths too.
        sample = controller.sample(7, step, 0, p_ops=0.0, p_filters=0.3)
        macs = int(graph_macs(terms, sample.index, sample.active).numpy())
        point = controller.point({k: int(v.numpy()) for k, v in sample.index.items()}, setting)
        candidate = decode(space, point)
        assert macs == candidate.cost(space.num_classes).macs == candidate_macs(space, candidate)
        seen.add(macs)
        assert sample.index["b1.l2.kernel"].dtype == tf.int32
    assert len(seen) > 40


def _gradients(space, index_values):
    import tensorflow as tf

    from search.oneshot.controller import Controller
    from search.oneshot.loop import options_by_se
    from search.oneshot.settings import input_settings
    from search.oneshot.supernet import Supernet

    setting = input_settings(space)[0]
    supernet = Supernet(space, options_by_se(space, setting))
    for variable in supernet.weights:
        if variable.path.endswith("rezero"):
            variable.assign(1.0)    # ReZero starts at 0, which would zero the branches' gradients too
    controller = Controller(space)
    clips = tf.random.stateless_uniform([4, 4, 16, 16, 3], seed=[1, 2])

    @tf.function
    def gradients(index):
        sample = controller.fixed(index)
        with tf.GradientTape() as tape:
            loss = tf.reduce_sum(tf.square(supernet(clips, sample=sample)))
        return tape.gradient(loss, supernet.trainable_variables)

    paths = [v.path for v in supernet.trainable_variables]
    results = []
    for values in index_values:
        index = {p.name: tf.constant(values.get(p.name, 0), tf.int32) for p in controller.params}
        grads = gradients(index)
        assert all(g is not None for g in grads)
        results.append({path: np.abs(g.numpy()).max() for path, g in zip(paths, grads)})
    return results


def test_unsampled_branches_get_zero_not_missing_gradients():
    space = make_space()
    small, other = _gradients(space, [
        {"b0.l0.kernel": 1, "options.se_type": 1, "b1.depth": 0},      # 3x3x3, no SE, one layer in block 1
        {"b0.l0.kernel": 2, "options.se_type": 0, "b1.depth": 2, "b1.l2.kernel": 1},
    ])
    assert small.keys() == other.keys()
    assert small["block0_layer0_kernel1/spatial_kernel"] > 0 and small["block0_layer0_kernel1/temporal_kernel"] > 0
    unsampled_in_small = ("block0_layer0_kernel2/spatial_kernel", "block0_layer0_kernel2/temporal_kernel",
                          "block0_layer0_se_2plus3d/reduce_kernel", "block1_layer1/expand_kernel",
                          "block1_layer2_kernel1/temporal_kernel")
    for path in unsampled_in_small:
        assert small[path] == 0 and other[path] > 0, path
    for path in ("block0_layer0_kernel0/spatial_kernel", "block0_layer0_kernel1/spatial_kernel"):
        assert other[path] == 0, path


# Points of SPACE with every SE type: narrower widths and expansions, a block below its deepest,
# 1x3x3 and 3x3x3/5x3x3 kernels, identity and projected skips (stride 1 and strided).
EQUIVALENT_POINTS = [
    {"stem.filters": 16, "b0.filters": 8, "b0.depth": 2, "b0.l0.expand": 2.0, "b0.l0.kernel": "5x3x3",
     "b0.l1.expand": 4.0, "b0.l1.kernel": "1x3x3", "b1.filters": 24, "b1.depth": 3, "b1.l0.expand": 32,
     "b1.l0.kernel": "3x3x3", "b1.l1.expand": 2.0, "b1.l1.kernel": "1x3x3", "b1.l2.expand": 4.0,
     "b1.l2.kernel": "3x3x3", "head.project_filters": 32, "head.head_filters": 64, "options.se_type": "2plus3d"},
    {"stem.filters": 8, "b0.filters": 16, "b0.depth": 1, "b0.l0.expand": 4.0, "b0.l0.kernel": "3x3x3",
     "b1.filters": 32, "b1.depth": 1, "b1.l0.expand": 64, "b1.l0.kernel": "1x3x3",
     "head.project_filters": 64, "head.head_filters": 32, "options.se_type": "3d"},
    {"stem.filters": 16, "b0.filters": 16, "b0.depth": 2, "b0.l0.expand": 2.0, "b0.l0.kernel": "1x3x3",
     "b0.l1.expand": 2.0, "b0.l1.kernel": "5x3x3", "b1.filters": 16, "b1.depth": 2, "b1.l0.expand": 64,
     "b1.l0.kernel": "3x3x3", "b1.l1.expand": 4.0, "b1.l1.kernel": "3x3x3",
     "head.project_filters": 32, "head.head_filters": 32, "options.se_type": "2d"},
    {"stem.filters": 8, "b0.filters": 8, "b0.depth": 1, "b0.l0.expand": 4.0, "b0.l0.kernel": "3x3x3",
     "b1.filters": 24, "b1.depth": 2, "b1.l0.expand": 32, "b1.l0.kernel": "1x3x3", "b1.l1.expand": 4.0,
     "b1.l1.kernel": "1x3x3", "head.project_filters": 64, "head.head_filters": 64, "options.se_type": "none"},
]


def _randomize(supernet, seed=3):
    """ReZero scalars, BN scales and every shift/bias far from their init, so each path and each
    channel mask shows in the logits; the classifier kernel wide enough for O(1) logits."""
    rng = np.random.default_rng(seed)
    for variable in supernet.weights:
        name, shape = variable.path.rsplit("/", 1)[-1], variable.shape
        if name == "rezero" or "gamma" in name:
            variable.assign(rng.uniform(0.5, 1.5, shape) * rng.choice([-1.0, 1.0], shape))
        elif "beta" in name or name.endswith("bias"):
            variable.assign(rng.normal(0.0, 0.5, shape))
        elif name == "classifier_kernel":
            variable.assign(rng.normal(0.0, 0.3, shape))


def _copy_into_standalone(supernet, model, space):
    """Copies the supernet's weights of the sub-network ``model`` stands for into it: the first
    rows/columns of each widest kernel, the chosen kernel branch and SE type, skips and the head."""
    def put(target, source):
        target.assign(np.asarray(source))

    def put_norm(bn, gamma, beta, width):
        put(bn.gamma, gamma.numpy()[:width])
        put(bn.beta, beta.numpy()[:width])

    spec, se_type = model.spec, model.options.se_type
    stem = supernet.stem
    put(model.stem.kernel, stem.kernel.numpy()[..., :spec.stem.filters])
    put_norm(model.stem.bn, stem.gamma, stem.beta, spec.stem.filters)
    for block, (b, l, cin, cout, layer) in zip(model.blocks, spec.iter_layers()):
        shared = supernet.blocks[b][l]
        expand = layer.expand
        put(block.expansion.kernel, shared.expand_kernel.numpy()[:cin, :expand])
        put_norm(block.expansion.bn, shared.expand_gamma, shared.expand_beta, expand)
        branch = shared.kernels[space.blocks[b].layers[l].kernel.index(layer.kernel)]
        feature = block.feature
        assert feature.separable == branch.separable
        if feature.separable:
            put(feature.spatial.kernel, branch.spatial.numpy()[:, :, :expand])
            put_norm(feature.spatial.bn, branch.gammas[0], branch.betas[0], expand)
            if layer.kernel[0] > 1:
                put(feature.temporal_kernel, branch.temporal.numpy()[:, :, :expand])
                put_norm(feature.bn_temporal, branch.gammas[1], branch.betas[1], expand)
        else:
            put(feature.kernel, branch.kernel.numpy()[..., :expand])
            put_norm(feature.bn, branch.gammas[0], branch.betas[0], expand)
        if se_type != "none":
            se, hidden = shared.se[se_type], block.se.hidden
            reduce = se.reduce_kernel.numpy()
            if se_type == "2plus3d":   # [temporal; spatial] pools, each over the widest channels
                reduce = np.concatenate([reduce[:expand], reduce[shared.widest:shared.widest + expand]])
            put(block.se.reduce.kernel, reduce[:2 * expand if se_type == "2plus3d" else expand, :hidden])
            put(block.se.reduce.bias, se.reduce_bias.numpy()[:hidden])
            put(block.se.expand.kernel, se.expand_kernel.numpy()[:hidden, :expand])
            put(block.se.expand.bias, se.expand_bias.numpy()[:expand])
        put(block.projection.kernel, shared.project_kernel.numpy()[:expand, :cout])
        put_norm(block.projection.bn, shared.project_gamma, shared.project_beta, cout)
        put(block.rezero, shared.rezero)
        if block.skip is not None:
            put(block.skip.kernel, shared.skip_kernel.numpy()[:cin, :cout])
            put_norm(block.skip.bn, shared.skip_gamma, shared.skip_beta, cout)
    head, project, head_filters = supernet.head, spec.head.project_filters, spec.head.head_filters
    last = spec.blocks[-1].filters
    put(model.head.project.kernel, head.project_kernel.numpy()[:last, :project])
    put_norm(model.head.project.bn, head.project_gamma, head.project_beta, project)
    put(model.classifier.head.kernel, head.head_kernel.numpy()[:project, :head_filters])
    put(model.classifier.head.bias, head.head_bias.numpy()[:head_filters])
    put(model.classifier.classifier.kernel, head.classifier_kernel.numpy()[:head_filters])
    put(model.classifier.classifier.bias, head.classifier_bias)


@pytest.mark.parametrize("fixed_options", [{}, {"conv_type": ["3d"], "average_pooling_type": ["2d"]},
                                           {"average_pooling_type": ["none"]}],
                         ids=["stream_defaults", "3d_conv_2d_pool", "no_pool"])
def test_a_sub_network_computes_what_the_standalone_network_of_its_spec_computes(fixed_options):
    """The supernet at a point, with its weights copied into the stand-alone stream model of the
    decoded spec, gives that model's logits (both on batch statistics)."""
    import tensorflow as tf

    from movinet.model import build_model
    from search.oneshot.controller import Controller
    from search.oneshot.loop import options_by_se
    from search.oneshot.settings import input_settings
    from search.oneshot.supernet import Supernet

    space = make_space(space={**SPACE["space"], "options": {"se_type": ["2plus3d", "3d", "2d", "none"],
                                                           **fixed_options}})
    setting = input_settings(space)[0]
    options = options_by_se(space, setting)
    supernet = Supernet(space, options, seed=1)
    _randomize(supernet)
    controller = Controller(space)
    clips = tf.random.stateless_uniform([2, setting.frames, setting.resolution, setting.resolution, 3], seed=[5, 6])

    @tf.function     # in a graph, as the search runs it (one trace: the indices are tensors)
    def run_supernet(index):
        sample = controller.fixed(index)
        return supernet(clips, sample=sample)

    for values in EQUIVALENT_POINTS:
        # Every choice of the point named: a KeyError otherwise.
        point = space.sample(lambda p: values[p.name] if len(p.choices) > 1 else p.choices[0])
        index = {p.name: tf.constant(p.choices.index(point[p.name]) if p.name in point else 0, tf.int32)
                 for p in controller.params}
        candidate = decode(space, point)
        model = build_model(candidate.spec, "stream", num_classes=space.num_classes, **candidate.options)
        assert model.options == options[point["options.se_type"]]
        _copy_into_standalone(supernet, model, space)
        expected = model(clips, training=True).numpy()
        got = run_supernet(index).numpy()
        assert np.abs(expected).max() > 0.3                          # logits of order 1
        # Measured: at most 3e-7 (float32 rounding of sums in another order).
        np.testing.assert_allclose(got, expected, rtol=0, atol=2e-6, err_msg=str(values))


def test_the_weight_step_takes_the_recipes_l2_and_clipping_on_every_kernel():
    """One SGD step of the shared weights is w - rate * clip(grad(cross-entropy + wd/2 * sum of
    every kernel's squares but the classifier's)), each variable's gradient clipped on its own:
    the kernels of branches the sample leaves out move by their decay alone."""
    import keras
    import tensorflow as tf

    from search.oneshot.loop import OneShotRun, load_clips
    from search.oneshot.settings import input_settings, oneshot_settings
    from movinet.data import DataConfig

    weight_decay, clipnorm = 0.05, 0.02
    space = make_space(budget={**SPACE["budget"], "optimizer": "sgd", "learning_rate": 0.5,
                               "weight_decay": weight_decay, "clipnorm": clipnorm, "warmup_fraction": 0.0,
                               "label_smoothing": 0.0, "momentum": 0.0},
                       data={**SPACE["data"], "train_clips": 8, "val_clips": 8, "batch_size": 2},
                       space={**SPACE["space"], "blocks": SPACE["space"]["blocks"][:1]})
    setting = input_settings(space)[0]
    config = DataConfig(**{**space.data, "frames": setting.frames, "resolution": setting.resolution})
    train, val, _ = load_clips(config)
    run = OneShotRun(space, setting, oneshot_settings(space), tf.distribute.get_strategy(), train, val, seed=0)
    index = run.point_index({"b0.l0.kernel": "1x3x3"})
    sample = run.controller.fixed(index)
    clips, labels = run.train.batch(0, 0, 0, 0, run.batch_size, 1)
    weights = run.supernet.trainable_variables
    kernels = [w for w in weights if w.path.endswith("kernel") and "classifier" not in w.path]

    @tf.function
    def loss_gradients():
        with tf.GradientTape() as tape:
            cross_entropy = tf.reduce_mean(keras.losses.sparse_categorical_crossentropy(
                labels, run.supernet(clips, sample=sample), from_logits=True))
            loss = cross_entropy + weight_decay / 2 * tf.add_n([tf.reduce_sum(w ** 2) for w in kernels])
        return tape.gradient(loss, weights)

    gradients = loss_gradients()
    rate = float(run.weights_optimizer.learning_rate)
    expected = {w.path: (w - rate * tf.clip_by_norm(g, clipnorm)).numpy() for w, g in zip(weights, gradients)}
    before = {w.path: w.numpy() for w in weights}
    tf.function(lambda: run.train_weights(sample, (clips, labels)))()
    assert rate == 0.5 and len(kernels) > 20
    assert sum(float(tf.norm(g)) > clipnorm for g in gradients) > 10      # the clipping is at work
    for w in weights:
        np.testing.assert_allclose(w.numpy(), expected[w.path], rtol=1e-5, atol=1e-6, err_msg=w.path)
    unsampled = "block0_layer0_kernel2/temporal_kernel"      # [5, 3, 3], not sampled: decay alone moves it
    moved = next(w for w in weights if w.path.endswith(unsampled)).numpy() - next(
        v for k, v in before.items() if k.endswith(unsampled))
    assert np.abs(moved).max() > 1e-3


def search(tmp_path, name, target_macs=1.2e6, seed=0, resume=False, on_progress=None, **oneshot):
    from search.oneshot import input_settings, train_supernet

    space = make_space(objective={**SPACE["objective"], "target_macs": target_macs},
                       oneshot={**SPACE["oneshot"], **oneshot})
    return train_supernet(space, input_settings(space)[0], folder=tmp_path / name, seed=seed, resume=resume,
                          on_progress=on_progress)


@pytest.mark.slow
def test_searches_at_three_targets_end_within_5_percent_of_them(tmp_path):
    median = median_macs(make_space())
    ratios = []
    for factor in (0.5, 1.0, 2.0):
        result = search(tmp_path, f"x{factor}", target_macs=factor * median)
        assert result["macs"] == candidate_macs(make_space(), decode(make_space(), result["point"]))
        ratios.append(result["macs"] / result["target_macs"])
    assert sum(abs(r - 1) <= 0.05 for r in ratios) >= 2, ratios


class Killed(Exception):
    pass


@pytest.mark.slow
def test_a_killed_search_resumes_to_the_same_final_spec(tmp_path):
    settings = {"steps": 40, "log_every": 10, "checkpoint_every": 10}
    whole = search(tmp_path, "whole", **settings)

    def kill_at_20(progress):
        if progress["step"] == 20:
            raise Killed

    with pytest.raises(Killed):
        search(tmp_path, "killed", on_progress=kill_at_20, **settings)
    logged = []
    resumed = search(tmp_path, "killed", resume=True, on_progress=lambda p: logged.append(p["step"]), **settings)
    assert logged == [30, 40]          # it went on from the checkpoint of step 20
    assert resumed["spec"] == whole["spec"]
    for name, probabilities in whole["decisions"].items():
        np.testing.assert_allclose(resumed["decisions"][name], probabilities, atol=1e-6)
    steps = (tmp_path / "killed" / "steps.csv").read_text().splitlines()[1:]
    assert [int(row.split(",")[0]) for row in steps] == list(range(1, 41))
