"""Named models: the published specs (A0-A5, T0) and the ensembles of ``specs/family/ensembles.yaml`` (A6).

A single name builds with ``movinet.build_model``; an ensemble name builds its members and wraps them
(``family.ensemble``). :func:`materialize` writes either kind to a folder that :func:`load` reads back:

    single:    <dir>/ckpt.*, spec.yaml, options.json        (movinet.checkpoints.save)
    ensemble:  <dir>/<member>/...  (one such folder per member) + <dir>/ensemble.yaml
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from family.scaling import FamilyError, FamilyReader
from movinet.cost import cost
from movinet.spec import InputSpec, ModelSpec, SpecError, load_spec, named_specs, read_yaml

KINDS = {"resolution": "ResolutionEnsemble", "temporal": "TemporalEnsemble"}
ENSEMBLE_FILE = "ensemble.yaml"


def ensemble_class(kind: str):
    """The Keras class of an ensemble kind (imported on use: listing needs no TensorFlow)."""
    from family import ensemble

    return getattr(ensemble, KINDS[kind])


@dataclasses.dataclass(frozen=True)
class EnsembleEntry:
    name: str
    kind: str
    member_names: tuple[str, ...]
    member_specs: tuple[ModelSpec, ...]
    input: InputSpec | None
    published: Mapping


def default_ensembles_path() -> Path:
    return Path(__file__).resolve().parent.parent / "specs" / "family" / "ensembles.yaml"


def load_ensembles(path: "str | Path | None" = None) -> dict[str, EnsembleEntry]:
    """The ensembles of a registry file; members are published names or spec files, or
    ``{name: N, spec: S}`` (a temporal ensemble repeats one spec under two names)."""
    path = Path(path or default_ensembles_path())
    r = FamilyReader(str(path))
    data = read_yaml(path, "ensembles", FamilyError) or {}
    if not isinstance(data, Mapping):
        r.fail("", "expected a mapping of ensemble names to their kind, members and input")
    entries = {}
    for name, entry in data.items():
        where = str(name)
        r.mapping(entry, where, ("kind", "members"), ("input", "published"))
        if entry["kind"] not in KINDS:
            r.fail(f"{where}.kind", f"expected one of {list(KINDS)}, got {entry['kind']!r}")
        members = entry["members"]
        if not isinstance(members, list) or len(members) < 2:
            r.fail(f"{where}.members", f"expected a list of two or more members, got {members!r}")
        names, specs = [], []
        for k, member in enumerate(members):
            if isinstance(member, Mapping):
                r.mapping(member, f"{where}.members[{k}]", ("name", "spec"))
                member_name, spec = str(member["name"]), member["spec"]
            else:
                member_name, spec = str(member), member
            try:
                specs.append(load_spec(spec))
            except SpecError as err:
                r.fail(f"{where}.members[{k}]", str(err))
            names.append(member_name)
        clip = read_input(r, entry["input"], f"{where}.input") if entry.get("input") is not None else None
        entries[str(name)] = EnsembleEntry(str(name), entry["kind"], tuple(names), tuple(specs), clip,
                                           dict(entry.get("published") or {}))
    return entries


def read_input(r: FamilyReader, given, where: str) -> InputSpec:
    """An ``input: {frames, resolution, fps}`` mapping of a registry or ensemble file."""
    r.mapping(given, where, ("frames", "resolution", "fps"))
    return InputSpec(frames=r.positive_int(given["frames"], f"{where}.frames"),
                     resolution=r.positive_int(given["resolution"], f"{where}.resolution"),
                     fps=r.positive_number(given["fps"], f"{where}.fps"))


def names(ensembles: Mapping[str, EnsembleEntry] | None = None) -> list[str]:
    ensembles = load_ensembles() if ensembles is None else ensembles
    return named_specs() + sorted(ensembles)


def _entry(name: str, ensembles: Mapping[str, EnsembleEntry] | None) -> EnsembleEntry | None:
    ensembles = load_ensembles() if ensembles is None else ensembles
    if name in ensembles:
        return ensembles[name]
    if name not in named_specs():
        raise FamilyError(f"unknown model {name!r}: known names are {names(ensembles)}")
    return None


def ensemble_video(entry: EnsembleEntry) -> InputSpec:
    """The video an ensemble is fed: its ``input``, else its longest member's published clip."""
    return entry.input or max((s.input for s in entry.member_specs if s.input), key=lambda i: i.frames)


def member_clips(entry: EnsembleEntry) -> list[tuple[int, int]]:
    """(frames, resolution) each member of an ensemble sees of the ensemble's input video."""
    video = ensemble_video(entry)
    count = len(entry.member_specs)
    if entry.kind == "temporal":
        return [(len(range(k, video.frames, count)), video.resolution) for k in range(count)]
    return [(video.frames, spec.input.resolution) for spec in entry.member_specs]


def build(name: str, mode: str = "base", *, num_classes: int = 600,
          checkpoints_by_member: "Mapping[str, str] | str | None" = None,
          resolutions: Sequence[int] | None = None, ensembles: Mapping[str, EnsembleEntry] | None = None,
          **options):
    """A named model ready to run: a MovinetClassifier, or an ensemble of them.

    Args:
      checkpoints_by_member: a checkpoint path (single model), or {member name: path} (ensemble).
      resolutions: an ensemble's member resolutions (default: each member's published one).
      **options: build options (movinet.options.ModelOptions fields) for every member.
    """
    from movinet import checkpoints
    from movinet.model import build_model

    entry = _entry(name, ensembles)
    if resolutions is not None and (entry is None or entry.kind != "resolution"):
        raise FamilyError(f"resolutions={list(resolutions)}: only a resolution ensemble has member resolutions; "
                          f"{name} is {'a single model' if entry is None else f'a {entry.kind} ensemble'}")
    if entry is None:
        model = build_model(name, mode, num_classes=num_classes, **options)
        if checkpoints_by_member is not None:
            if isinstance(checkpoints_by_member, Mapping):
                raise FamilyError(f"{name} is a single model: give one checkpoint path, not per-member ones")
            checkpoints.load_weights(model, checkpoints_by_member)
        return model
    paths = checkpoints_by_member or {}
    if not isinstance(paths, Mapping):
        raise FamilyError(f"{name} is an ensemble of {list(entry.member_names)}: give a checkpoint per member "
                          "(member=path)")
    unknown = sorted(set(paths) - set(entry.member_names))
    if unknown:
        raise FamilyError(f"checkpoints for {unknown}: {name} has members {list(entry.member_names)}")
    members = []
    for member_name, spec in zip(entry.member_names, entry.member_specs):
        member = build_model(spec, mode, num_classes=num_classes, **options)
        if member_name in paths:
            checkpoints.load_weights(member, paths[member_name])
        members.append(member)
    extra = {}
    if entry.kind == "resolution":
        extra["resolutions"] = list(resolutions or [clip[1] for clip in member_clips(entry)])
    return ensemble_class(entry.kind)(members, list(entry.member_names), video_input=ensemble_video(entry),
                                      name=f"movinet_{name}_{mode}", **extra)


def describe(name: str, mode: str = "base", ensembles: Mapping[str, EnsembleEntry] | None = None) -> dict:
    """One row of the registry: members, input clip, parameters, multiply-adds, published top-1."""
    entry = _entry(name, ensembles)
    if entry is None:
        spec = load_spec(name)
        result = cost(spec, mode)
        clip = spec.input
        return {"name": name, "members": [name], "input": clip, "params": result.params, "macs": result.macs,
                "top1": spec.published.get(f"top1_{mode}"), "clips": [(clip.frames, clip.resolution)]}
    clips = member_clips(entry)
    costs = [cost(spec, mode, frames=frames, resolution=resolution)
             for spec, (frames, resolution) in zip(entry.member_specs, clips)]
    video = ensemble_video(entry)
    return {"name": name, "members": list(entry.member_names), "input": video,
            "params": sum(c.params for c in costs), "macs": sum(c.macs for c in costs),
            "top1": entry.published.get(f"top1_{mode}"), "clips": clips}


def format_registry(rows: Sequence[Mapping], mode: str) -> str:
    header = ("name", "members", "input (T x H x W @ fps)", "params (M)", "GMACs", f"top-1 K600 {mode} (%)")
    table = [header]
    for row in rows:
        clip = row["input"]
        shown = f"{clip.frames}x{clip.resolution}x{clip.resolution} @ {clip.fps:g}" if clip else "-"
        if len(row["members"]) > 1:
            shown += " (" + ", ".join(f"{m}: {f}x{r}" for m, (f, r) in zip(row["members"], row["clips"])) + ")"
        table.append((row["name"], "+".join(row["members"]), shown, f"{row['params'] / 1e6:.2f}",
                      f"{row['macs'] / 1e9:.2f}", "-" if row["top1"] is None else f"{row['top1']:.2f}"))
    widths = [max(len(line[i]) for line in table) for i in range(len(header))]
    lines = ["  ".join(cell.rjust(w) if i >= 3 else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths)))
             for line in table]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def materialize(name: str, out_dir: "str | Path", mode: str = "base", **build_kwargs) -> Path:
    """Builds a named model and saves it to ``out_dir`` (see the module docstring); returns it."""
    model = build(name, mode, **build_kwargs)
    return save(model, out_dir)


def save(model, out_dir: "str | Path") -> Path:
    from movinet import checkpoints

    out_dir = Path(out_dir)
    if not hasattr(model, "members"):
        return checkpoints.save(model, out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    members = []
    for member_name, member in zip(model.member_names, model.members):
        checkpoints.save(member, out_dir / member_name)
        members.append({"name": member_name, "path": member_name})
    kind = next(kind for kind in KINDS if isinstance(model, ensemble_class(kind)))
    description = {"name": model.name, "kind": kind, "mode": model.mode, "members": members}
    if kind == "resolution":
        description["resolutions"] = list(model.resolutions)
    if model.video_input is not None:
        description["input"] = dataclasses.asdict(model.video_input)
    (out_dir / ENSEMBLE_FILE).write_text(yaml.safe_dump(description, sort_keys=False))
    return out_dir


def load(directory: "str | Path"):
    """A model written by :func:`materialize` / :func:`save`, weights loaded."""
    from movinet import checkpoints

    directory = Path(directory)
    path = directory / ENSEMBLE_FILE
    if not path.exists():
        return checkpoints.load_model(directory)
    r = FamilyReader(str(path))
    data = read_yaml(path, "ensemble", FamilyError)
    r.mapping(data, "", ("name", "kind", "members"), ("mode", "resolutions", "input"))
    if data["kind"] not in KINDS:
        r.fail("kind", f"expected one of {list(KINDS)}, got {data['kind']!r}")
    if not isinstance(data["members"], list) or len(data["members"]) < 2:
        r.fail("members", "expected a list of two or more members")
    members, member_names = [], []
    for k, item in enumerate(data["members"]):
        r.mapping(item, f"members[{k}]", ("name", "path"))
        member = checkpoints.load_model(directory / str(item["path"]))
        if members and member.options.num_classes != members[0].options.num_classes:
            r.fail(f"members[{k}]", f"{item['name']} has {member.options.num_classes} classes but "
                                    f"{member_names[0]} has {members[0].options.num_classes}: the members of an "
                                    "ensemble must share one class list")
        members.append(member)
        member_names.append(str(item["name"]))
    resolutions = data.get("resolutions")
    if data["kind"] == "resolution" and (not isinstance(resolutions, list) or len(resolutions) != len(members)):
        r.fail("resolutions", f"expected one resolution per member, got {resolutions!r}")
    extra = {"resolutions": resolutions} if data["kind"] == "resolution" else {}
    if data.get("input") is not None:
        extra["video_input"] = read_input(r, data["input"], "input")
    return ensemble_class(data["kind"])(members, member_names, name=str(data["name"]), **extra)
