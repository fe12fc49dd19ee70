"""The ``movinet`` command itself: ``info`` prints the cost model's table, user errors exit with
status 2 in one line, the training commands switch oneDNN on."""

import json
import os

import pytest

import movinet
from cli.main import main


def run_cli(capsys, *argv):
    status = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out.splitlines(), [line for line in err.splitlines() if line.strip()]


def test_info_prints_the_cost_models_table_and_totals(capsys):
    status, lines, _ = run_cli(capsys, "info", "a0", "--mode", "stream", "--frames", "5", "--resolution", "64")
    result = movinet.cost("a0", "stream", frames=5, resolution=64)
    assert status == 0
    rows = {line.split()[0]: line.split() for line in lines if line.split() and line.split()[0] != "-" * 4}
    for layer in result.layers:
        assert rows[layer.name][1:] == ["x".join(map(str, layer.out_shape)), f"{layer.params:,}",
                                        f"{layer.macs:,}", f"{layer.state_elements:,}"], layer.name
    assert rows["total"][2:] == [f"{result.params:,}", f"{result.macs:,}", f"{result.state_elements:,}"]
    assert result.params == 3_765_983                      # the official A0 stream count
    assert lines[-1].startswith(f"a0: {result.params:,} parameters ({result.trainable_params:,} trainable), "
                                f"{result.macs / 1e9:.3f} GMACs on 5x64x64, stream state")


def test_info_json_holds_every_layer(capsys):
    status, lines, _ = run_cli(capsys, "info", "t0", "--json", "--se-type", "none", "--num-classes", "7")
    summary = json.loads("\n".join(lines))
    result = movinet.cost("t0", "base", se_type="none", num_classes=7)
    assert status == 0 and summary["params"] == result.params and summary["macs"] == result.macs
    assert [layer["macs"] for layer in summary["layers"]] == [layer.macs for layer in result.layers]


def test_a_bad_spec_file_is_one_line_and_exit_status_2(tmp_path, capsys):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\nstem: {filters: 8}\nblocks: [{filters: 16, layers: [{expand: 32, stride: 5}]}]\n")
    status, lines, errors = run_cli(capsys, "info", spec)
    assert status == 2 and lines == [] and len(errors) == 1
    assert errors[0].startswith("movinet info: error: ") and "bad.yaml" in errors[0]


@pytest.mark.parametrize("argv, switched", [(["family", "list"], True), (["info", "t0", "--json"], False)])
def test_training_commands_switch_onednn_on_unless_set(argv, switched, capsys, monkeypatch):
    monkeypatch.delenv("TF_ENABLE_ONEDNN_OPTS", raising=False)
    assert run_cli(capsys, *argv)[0] == 0
    assert os.environ.get("TF_ENABLE_ONEDNN_OPTS") == ("1" if switched else None)
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")             # the user's opt-out stands
    assert run_cli(capsys, *argv)[0] == 0 and os.environ["TF_ENABLE_ONEDNN_OPTS"] == "0"
