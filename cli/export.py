"""``movinet export`` (SavedModel / TF Lite) and ``movinet predict`` (top-k per frame of a video)."""

from __future__ import annotations

import json

MODEL_HELP = ("a published name (a0..a5, t0) or spec YAML (with --checkpoint), an ensemble name (a6), or a "
              "directory written by movinet.checkpoints.save or `movinet family materialize`")


def register(subparsers) -> None:
    export = subparsers.add_parser("export", help="write a model as a SavedModel or a TF Lite file")
    export.add_argument("model", help=MODEL_HELP)
    export.add_argument("--mode", choices=("base", "stream"), default="stream")
    export.add_argument("--checkpoint", help="official checkpoint: directory, prefix or .tar.gz")
    export.add_argument("--num-classes", type=int, default=600)
    export.add_argument("--format", choices=("saved_model", "tflite"), default="tflite")
    export.add_argument("--quantize", choices=("float16", "int8"), help="TF Lite post-training quantization")
    export.add_argument("--calibration", nargs="+", metavar="VIDEO",
                        help="videos to calibrate int8 on, streamed frame by frame")
    export.add_argument("--check", nargs="+", metavar="VIDEO",
                        help="held-out videos: print the TF Lite model's top-1 agreement with the Keras model, "
                             "the per-frame latency of both and the ops XNNPACK leaves out")
    export.add_argument("--states", choices=("inside", "outside"), default="inside",
                        help="a TF Lite stream model's states: kept in the file (signatures init_states and call, "
                             "image -> logits) or passed in and out by name (the official signature)")
    export.add_argument("--resolution", type=int,
                        help="square input size (TF Lite default: the published one; SavedModel: dynamic)")
    export.add_argument("--frames", type=int, help="clip length of a base model (TF Lite default: published)")
    export.add_argument("--batch", type=int, default=1, help="SavedModel batch size (0: dynamic)")
    export.add_argument("--fps", type=float, help="frame rate to decode calibration videos at")
    export.add_argument("--out", required=True, help="SavedModel directory or .tflite file")
    export.add_argument("--threads", type=int,
                        help="with --check: CPU threads of TensorFlow's pools and the TF Lite interpreter")
    export.set_defaults(run=run_export)

    predict = subparsers.add_parser("predict", help="top-k classes of a video file, frame by frame")
    predict.add_argument("video", help="a video file (mp4, avi, webm, mkv, ...)")
    predict.add_argument("--model", required=True, help=MODEL_HELP + ", or a .tflite file")
    predict.add_argument("--checkpoint", help="official checkpoint for a named model")
    predict.add_argument("--mode", choices=("base", "stream"), default="stream")
    predict.add_argument("--num-classes", type=int, default=600)
    predict.add_argument("--labels", help="class names, one per line")
    predict.add_argument("--top-k", type=int, default=5)
    predict.add_argument("--fps", type=float, help="model frame rate (default: the published one)")
    predict.add_argument("--resolution", type=int, help="square input size (default: the published one)")
    predict.add_argument("--json", action="store_true", help="one JSON object per line")
    predict.add_argument("--xla", action="store_true",
                         help="compile a Keras stream model's step with XLA: less time per frame after a "
                              "compilation of several seconds (for long videos)")
    predict.add_argument("--threads", type=int,
                         help="CPU threads of TensorFlow's pools or the TF Lite interpreter (default: all "
                              "cores); a stream step on a 2-core CPU can be faster on one")
    predict.add_argument("--pipeline", type=int, default=1, metavar="STAGES",
                         help="run a Keras stream model as STAGES consecutive parts on their own threads, "
                              "the next frame's first part beside this one's last: more frames a second on "
                              "a multi-core CPU, the same logits (2 on 2 cores; default: 1, whole)")
    predict.set_defaults(run=run_predict)


def run_export(args) -> int:
    from movinet import export, predict, runners

    _set_threads(args.threads)
    model = load_model(args)
    if args.format == "saved_model":
        if args.quantize or args.calibration or args.check:
            raise ValueError("--quantize, --calibration and --check apply to --format tflite only")
        path = export.export_saved_model(model, args.out, frames=args.frames, resolution=args.resolution,
                                         batch=args.batch or None)
        print(f"wrote {path}")
    else:
        resolution, fps = predict.model_input(model, args.resolution, args.fps)
        if (args.quantize == "int8") != bool(args.calibration):
            raise ValueError("--quantize int8 needs --calibration VIDEO ... (videos like those the model will "
                             "see), and --calibration is for int8 only")
        calibration = [predict.read_video(v, resolution=resolution, fps=fps) for v in args.calibration or ()]
        path = export.export_tflite(model, args.out, resolution=resolution, quantization=args.quantize,
                                    calibration=calibration or None, frames=args.frames, states=args.states)
        print(f"wrote {path}")
        if args.check:
            clips = [predict.read_video(v, resolution=resolution, fps=fps) for v in args.check]
            runner = runners.TFLiteStreamRunner(path, args.threads)
            result = export.top1_agreement(model, runner, clips)
            print(f"TF Lite ({args.quantize or 'float32'}) vs Keras float32 on {result['clips']} videos: top-1 "
                  f"agreement {result['agreement']:.3f}, max |logit diff| {result['max_abs_diff']:.4f}")
            if model.mode == "stream":
                keras_ms, tflite_ms = (1000 * runners.seconds_per_frame(m, clips[0]) for m in (model, runner))
                print(f"per frame: Keras {keras_ms:.1f} ms, TF Lite {tflite_ms:.1f} ms")
            outside = runners.tflite_ops(path)[1]
            print("ops outside XNNPACK: " + (", ".join(f"{name} {count}" for name, count in outside.most_common())
                                             or "none"))
    return 0


def run_predict(args) -> int:
    from movinet import predict

    if args.top_k < 1:
        raise ValueError(f"--top-k {args.top_k}: expected a positive number")
    if args.pipeline < 1:
        raise ValueError(f"--pipeline {args.pipeline}: expected a positive number of stages")
    _set_threads(args.threads)
    model = load_model(args, num_threads=args.threads)
    labels = predict.read_labels(args.labels, predict.num_classes(model)) if args.labels else None
    for prediction in predict.predict_video(args.video, model, resolution=args.resolution, fps=args.fps,
                                            k=args.top_k, labels=labels, jit_compile=args.xla,
                                            stages=args.pipeline):
        print(json.dumps(prediction.to_dict()) if args.json else prediction.format(), flush=True)
    return 0


def load_model(args, num_threads: int | None = None):
    """The model that MODEL / --model names: what ``movinet.predict.load_model`` reads, or an ensemble
    (a directory written by ``movinet family materialize``, or a name of the registry)."""
    import warnings
    from pathlib import Path

    from family import registry
    from movinet import predict

    path = Path(args.model)
    ensemble_dir = path.is_dir() and (path / registry.ENSEMBLE_FILE).exists()
    if ensemble_dir or (not path.exists() and args.model in registry.load_ensembles()):
        if args.checkpoint:
            raise ValueError(f"{args.model} is an ensemble: give its members' checkpoints to `movinet family "
                             "materialize` and pass the folder it writes, without --checkpoint")
        if ensemble_dir:
            return registry.load(path)
        warnings.warn(f"{args.model} has random weights (materialize it with checkpoints first)", stacklevel=2)
        return registry.build(args.model, args.mode, num_classes=args.num_classes)
    return predict.load_model(args.model, checkpoint=args.checkpoint, mode=args.mode,
                              num_classes=args.num_classes, num_threads=num_threads)


def _set_threads(threads: int | None) -> None:
    """``--threads``: TensorFlow's pools, sized before it runs anything (None: its default)."""
    if threads is None:
        return
    if threads < 1:
        raise ValueError(f"--threads {threads}: expected a positive number")
    from movinet.threads import set_threads

    set_threads(threads)
