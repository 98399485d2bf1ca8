"""`vcontrast eval` with the toy model runs every benchmark's official-format fixture unchanged, RefCOCO from refer's
pickle with MAttNet detections, and reports each benchmark's headline metrics."""

import json

import pytest
import typer
from typer.testing import CliRunner

from tests.bench.test_refcoco import IMAGE_ID, write_refer
from tests.bench.test_runner import write_seetrue, write_sugarcrepe, write_vipbench
from tests.bench.test_whatsup import _write_whatsup
from vcontrast.bench.cli import eval_command


def _eval(args):
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.callback()(lambda: None)
    return CliRunner().invoke(app, ["eval", *args, "--method", "crg", "--proposer", "none", "--no-progress"])


def _write_refcoco(root, make_image):
    write_refer(root, make_image)
    dets = [
        {"det_id": 1, "box": [29, 9, 20, 20], "image_id": IMAGE_ID, "category_id": 1, "score": 0.9},
        {"det_id": 2, "box": [0, 0, 9, 19], "image_id": IMAGE_ID, "category_id": 1, "score": 0.8},
    ]
    (root / "res101_coco_minus_refer_notime_dets.json").write_text(json.dumps(dets))
    return ["--split", "testA", "--proposals", str(root / "res101_coco_minus_refer_notime_dets.json")]


@pytest.mark.parametrize(
    ("benchmark", "expected"),
    [
        ("whatsup", {"controlled_a/accuracy", "controlled_a/pair_accuracy", "mean/accuracy", "pooled/accuracy"}),
        ("sugarcrepe", {"accuracy"}),
        ("seetrue", {"auroc", "f1"}),
        ("vipbench", set()),
        ("refcoco", {"acc@0.5", "oracle@0.5", "random@0.5"}),
    ],
)
def test_official_fixture_runs_through_the_cli(tmp_path, make_image, benchmark, expected):
    data = tmp_path / "data"
    data.mkdir()
    extra = []
    if benchmark == "whatsup":
        _write_whatsup(data, make_image)
    elif benchmark == "sugarcrepe":
        write_sugarcrepe(data, make_image, n=3)
    elif benchmark == "seetrue":
        write_seetrue(data, make_image)
    elif benchmark == "vipbench":
        write_vipbench(data, make_image, n=2)
    else:
        extra = _write_refcoco(data, make_image)
    out = tmp_path / "out"
    result = _eval(["--benchmark", benchmark, "--data-dir", str(data), "--out", str(out), *extra])
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "metrics.json").read_text())
    assert set(summary["metrics"]) >= expected
    if benchmark == "refcoco":
        assert summary["metrics"]["oracle@0.5"] == 1.0 and summary["metrics"]["random@0.5"] == 0.5
        assert summary["n_items"] == 2 and "res101_coco_minus_refer_notime_dets.json" in summary["data"]["files"]
    if benchmark == "vipbench":
        assert summary["grader_files"] == ["vipbench/toy-crg-bbox.json", "vipbench/toy-crg-human.json"]
