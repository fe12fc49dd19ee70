"""``movinet train`` and ``movinet eval``: train a model into a run folder, evaluate a run folder."""

from __future__ import annotations

import json

import yaml

# (flag, DataConfig field, type); flags left out keep the DataConfig default.
DATA_FLAGS = (("--data", "source", str), ("--data-path", "path", str), ("--val-path", "val_path", str),
              ("--frames", "frames", int), ("--stride", "stride", int), ("--fps", "fps", float),
              ("--resolution", "resolution", int), ("--batch-size", "batch_size", int),
              ("--eval-batch-size", "eval_batch_size", int), ("--num-classes", "num_classes", int),
              ("--val-fraction", "val_fraction", float), ("--min-image-size", "min_image_size", int),
              ("--min-area", "min_area", float), ("--train-clips", "train_clips", int),
              ("--val-clips", "val_clips", int), ("--cache-dir", "cache_dir", str))
TRAIN_FLAGS = (("--epochs", "epochs", int), ("--optimizer", "optimizer", str), ("--lr", "learning_rate", float),
               ("--warmup-fraction", "warmup_fraction", float), ("--label-smoothing", "label_smoothing", float),
               ("--weight-decay", "weight_decay", float), ("--dropout", "dropout_rate", float),
               ("--stochastic-depth", "stochastic_depth_drop_rate", float), ("--precision", "precision", str),
               ("--strategy", "strategy", str), ("--tpu", "tpu_address", str),
               ("--steps-per-epoch", "steps_per_epoch", int), ("--max-seconds", "max_seconds", float),
               ("--init-checkpoint", "init_checkpoint", str), ("--seed", "seed", int))
HELP = {"--data": "synthetic | folder | csv | tfrecord (default synthetic)",
        "--data-path": "class folder, training CSV or training TFRecords",
        "--val-path": "validation folder, CSV or TFRecords",
        "--stride": "take every stride-th source frame", "--fps": "resample videos to this frame rate",
        "--lr": "peak learning rate for the global batch", "--optimizer": "rmsprop | sgd | adam | adamw",
        "--precision": "auto (default: mixed_float16 on GPUs, float32 on CPUs) | float32 | mixed_float16 | "
                       "mixed_bfloat16",
        "--strategy": "default | mirrored | multi_worker | tpu",
        "--max-seconds": "time budget: stop and evaluate once it is spent",
        "--init-checkpoint": "start from these weights (the classifier is left new)",
        "--seed": "seed of the data order, augmentation and initial weights"}


def _add_flags(parser, flags) -> None:
    for flag, field, kind in flags:
        parser.add_argument(flag, dest=field, type=kind, default=None, help=HELP.get(flag))


def _given(args, flags) -> dict:
    return {field: getattr(args, field) for _, field, _ in flags if getattr(args, field) is not None}


def register(subparsers) -> None:
    train = subparsers.add_parser("train", help="train a MoViNet into a run folder (resumes a run found there)")
    train.add_argument("model", help="a published name (a0..a5, t0) or a spec YAML file")
    train.add_argument("--mode", choices=("base", "stream"), default="base")
    train.add_argument("--run-dir", required=True, help="run folder: config, checkpoints, logs, history")
    _add_flags(train, DATA_FLAGS)
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="train on centre crops and centre clips")
    train.add_argument("--flip", dest="flip", action="store_true", default=None, help="random horizontal flips")
    train.add_argument("--no-flip", dest="flip", action="store_false")
    _add_flags(train, TRAIN_FLAGS)
    train.add_argument("--clipnorm", type=float, help="per-variable gradient norm limit; 0 turns clipping off")
    train.add_argument("--jit", dest="jit_compile", action="store_true", default=None, help="XLA-compile the step")
    train.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                       help="a model option (movinet.options.ModelOptions field), e.g. norm_momentum=0.9")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.set_defaults(run=run_train)

    evaluate = subparsers.add_parser("eval", help="top-1/top-5 and a confusion matrix of a run's last checkpoint")
    evaluate.add_argument("--run-dir", required=True)
    how = evaluate.add_mutually_exclusive_group()
    how.add_argument("--frame-by-frame", dest="frame_by_frame", action="store_true", default=None,
                     help="run a stream model frame by frame, carrying states (default for stream runs)")
    how.add_argument("--clips", dest="frame_by_frame", action="store_false", help="whole clips at once")
    evaluate.add_argument("--chunk-frames", type=int, default=1, help="frames per stream call")
    evaluate.add_argument("--data-path", dest="path", help="evaluate other data (with --val-path)")
    evaluate.add_argument("--val-path", dest="val_path")
    evaluate.add_argument("--frames", type=int, help="evaluate on clips of another length")
    evaluate.add_argument("--output-dir", help="default <run-dir>/eval")
    evaluate.set_defaults(run=run_eval)


def _model_options(pairs) -> dict:
    options = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--option {pair!r}: expected KEY=VALUE")
        options[key.strip()] = yaml.safe_load(value)
    return options


def run_train(args) -> int:
    from movinet.data import DataConfig
    from movinet.train import TrainConfig, train

    data = _given(args, DATA_FLAGS)
    for field in ("augment", "flip"):
        if getattr(args, field) is not None:
            data[field] = getattr(args, field)
    settings = _given(args, TRAIN_FLAGS)
    if args.seed is not None:
        data["seed"] = args.seed
    if args.clipnorm is not None:
        settings["clipnorm"] = args.clipnorm or None
    if args.jit_compile:
        settings["jit_compile"] = True
    settings["verbose"] = 0 if args.quiet else 1
    result = train(args.model, args.mode, DataConfig(**data), TrainConfig(**settings), args.run_dir,
                   model_options=_model_options(args.option))
    print(f"{args.run_dir}: epoch {result['epoch']}, top-1 {result['top1']:.4f}, top-5 {result['top5']:.4f}, "
          f"loss {result['loss']:.4f}, {result['skipped_files']} unreadable files skipped; "
          f"trained on {result['device']} in {result['precision']}")
    return 0


def run_eval(args) -> int:
    from movinet.evaluate import evaluate_run

    overrides = {k: v for k in ("path", "val_path", "frames") if (v := getattr(args, k)) is not None}
    result = evaluate_run(args.run_dir, frame_by_frame=args.frame_by_frame, chunk_frames=args.chunk_frames,
                          data_overrides=overrides, output_dir=args.output_dir)
    print(json.dumps({k: result[k] for k in ("top1", "top5", "loss", "count")}, indent=1))
    print(f"confusion matrix: {result['confusion_png']}")
    return 0
