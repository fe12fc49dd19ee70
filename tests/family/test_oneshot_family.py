"""One-shot member searches: a proxy clip (fewer frames, lower resolution, the target scaled by the
reference's cost ratio) whose found spec is reported at the member's real clip."""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from family import load_family
from family.proxy import Proxy, proxy_space
from family.scaling import FamilyError
from movinet.cost import cost
from movinet.spec import load_spec
from search.candidate import MODE, decode

ROOT = Path(__file__).resolve().parent.parent.parent
TINY = ROOT / "tests" / "search" / "oneshot_tiny.yaml"
TARGET = 2.0e6


@pytest.fixture
def tiny_family(tmp_path) -> Path:
    """A family of one member ``m`` (unscaled) on the tiny one-shot space at 8 frames of 48 px."""
    base = yaml.safe_load(TINY.read_text())
    base["space"]["input"] = {"resolution": [48], "frames": [8]}
    base["search"]["workers"] = 1
    (tmp_path / "base.yaml").write_text(yaml.safe_dump(base))
    family = {"name": "tiny", "base": {"space": "base.yaml", "fps": 5},
              "members": {"m": {"coefficients": {"depth": 1.0, "width": 1.0, "resolution": 1.0, "frame_rate": 1.0},
                                "target": {"macs": TARGET}}}}
    path = tmp_path / "family.yaml"
    path.write_text(yaml.safe_dump(family))
    return path


def reference_macs(space, frames, resolution):
    """The largest point of the member's space (its reference for a numeric target), as targets count."""
    return cost(decode(space, space.extreme_points()[1]).spec, "base", frames=frames, resolution=resolution,
                num_classes=600).macs


def test_a_proxy_scales_the_target_by_the_reference_architectures_cost_ratio(tiny_family):
    family = load_family(tiny_family)
    space, real = proxy_space(family, "m", Proxy(frames=4, resolution=32))
    assert (space.frames, space.resolution) == ((4,), (32,)) and (real.frames, real.resolution) == (8, 48)
    factor = reference_macs(space, 4, 32) / reference_macs(space, 8, 48)
    assert space.objective.target_macs == pytest.approx(TARGET * factor, rel=1e-12)
    with pytest.raises(FamilyError, match="members.m: proxy: 16 frames x 32 px is not a smaller clip"):
        proxy_space(family, "m", Proxy(frames=16, resolution=32))


@pytest.mark.slow
@pytest.mark.xdist_group("ray")   # starts a local Ray: not beside the search tests' cluster
def test_a_proxy_member_search_reports_the_found_spec_at_the_members_clip(tiny_family, tmp_path):
    out = tmp_path / "out"
    script = "import sys; from cli.main import main; sys.exit(main(sys.argv[1:]))"
    done = subprocess.run(
        [sys.executable, "-c", script, "family", "search", "m", "--family", str(tiny_family), "--algorithm",
         "oneshot", "--proxy-frames", "4", "--proxy-resolution", "32", "--num-cpus", "2", "--output-dir", str(out)],
        capture_output=True, text=True, timeout=600, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode == 0, done.stderr[-3000:]
    folder = out / "tiny_m"
    assert (folder / "r32_f4_s1" / "steps.csv").exists()   # the supernet trained on the proxy clip
    found = load_spec(folder / "best_spec.yaml")
    published = found.published
    assert (published["frames"], published["resolution"]) == (8, 48)
    options = found.options
    assert published["macs"] == cost(found, MODE, frames=8, resolution=48, num_classes=4, **options).macs
    assert published["searched_macs"] == cost(found, MODE, frames=4, resolution=32, num_classes=4, **options).macs
    assert published["macs"] > 2 * published["searched_macs"]
    (row,) = csv.DictReader(open(folder / "summary.csv"))
    assert (int(row["reported_frames"]), int(row["reported_resolution"]), int(row["reported_macs"])) == \
        (8, 48, published["macs"])
    assert "8x48: " in done.stdout
