"""``movinet family``: the subcommands parse their arguments and hand over to the library."""

import argparse

import numpy as np
import pytest

import cli.family
from cli.main import CommandError
from family import registry
from search.space import load_space
from tests.helpers import FIXTURES


def run(*argv):
    parser = argparse.ArgumentParser(prog="movinet")
    cli.family.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["family", *argv])
    return args.run(args)


def test_list_prints_every_named_model(capsys):
    assert run("list") == 0
    out = capsys.readouterr().out
    assert "a4+a5" in out and "84.80" in out
    assert all(name in out for name in registry.names())


def test_scale_writes_loadable_spaces(tmp_path, capsys):
    assert run("scale", "--out", str(tmp_path), "--member", "a0", "--member", "a3") == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a0.yaml", "a3.yaml"]
    assert load_space(tmp_path / "a3.yaml").frames == (120,)


def test_materialize_with_an_official_checkpoint_gives_the_official_logits(tmp_path, capsys):
    official = FIXTURES / "official" / "a0_base"
    assert run("materialize", "a0", "--num-classes", "10", "--checkpoint", str(official),
               "--out", str(tmp_path / "a0")) == 0
    reference = np.load(official / "io.npz")
    logits = registry.load(tmp_path / "a0")(reference["video"], training=False)
    np.testing.assert_allclose(logits, reference["logits"], rtol=0, atol=1e-6)


@pytest.mark.parametrize("argv, message", [
    (["materialize", "a6", "--checkpoint", "a4=x", "--checkpoint", "y"], "either one PATH or MEMBER=PATH"),
    (["materialize", "t0", "--checkpoint", "x", "--checkpoint", "y"], "a single model takes one PATH"),
])
def test_checkpoint_arguments_are_checked(argv, message):
    with pytest.raises(CommandError, match=message):
        run(*argv)


def test_search_of_an_unknown_member_fails_before_anything_runs():
    with pytest.raises(ValueError, match="no member 'a9'"):
        run("search", "a9")
