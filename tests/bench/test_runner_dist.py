"""The runner across processes: two processes launched with accelerate give the one-process predictions byte for
byte, and a run killed with SIGKILL resumes to the same result."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.bench.test_runner import FakeMethod, write_sugarcrepe
from tests.bench.test_runner_model import toy_items
from tests.cal.utils import free_port
from vcontrast.bench.runner import evaluate

pytest.importorskip("accelerate")

ROOT = Path(__file__).resolve().parents[2]

# Runs `evaluate` with CRG on the tiny LLaVA and records the item ids each process predicted in rank<R>-of-<N>.json.
SCRIPT = """
import json, sys
from pathlib import Path

from tests import tiny_models as tm
from vcontrast.bench.methods import get_method
from vcontrast.bench.runner import evaluate


def run(data, out):
    model, processor = tm.build("llava")
    method = get_method("crg", model, processor, alpha=1.0, proposer=None, max_new_tokens=3)
    predict, seen = method.predict, []

    def recording_predict(items, images):
        seen.extend(item.id for item in items)
        return predict(items, images)

    method.predict = recording_predict
    evaluate("toy", data, model=(model, processor), method=method, out_dir=out, batch_size=2, show_progress=False)
    return seen


if __name__ == "__main__":
    from accelerate import PartialState

    seen = run(sys.argv[1], Path(sys.argv[2]))
    state = PartialState()
    Path(sys.argv[2], f"rank{state.process_index}-of-{state.num_processes}.json").write_text(json.dumps(seen))
"""


def _env():
    # the checkout's own src/ first, so that the subprocess runs the code under test (not another installed copy)
    pythonpath = os.pathsep.join([str(ROOT), str(ROOT / "src")])
    env = dict(os.environ, PYTHONPATH=pythonpath, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Fixture data, the script, and the one-process reference run (in this process)."""
    root = tmp_path_factory.mktemp("dist")
    data = toy_items(root / "data", n=3)  # 12 items, 8 batches of at most 2 (one task each)
    script = root / "run_eval.py"
    script.write_text(SCRIPT)
    sys.path.insert(0, str(root))
    try:
        import run_eval
    finally:
        sys.path.remove(str(root))
    seen = run_eval.run(data, root / "ref")
    assert len(seen) == 12
    return root, data, script, run_eval


def test_two_processes_equal_one(setup):
    root, data, script, _ = setup
    out = root / "two"
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2"]
    cmd += ["--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    cmd += ["--main_process_port", str(free_port()), str(script), str(data), str(out)]
    result = subprocess.run(cmd, check=False, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]

    ranks = [json.loads((out / f"rank{r}-of-2.json").read_text()) for r in range(2)]
    assert ranks[0] and ranks[1] and not set(ranks[0]) & set(ranks[1])  # a strided shard each
    assert sorted(ranks[0] + ranks[1]) == sorted(
        json.loads(line)["id"] for line in (root / "ref" / "predictions.jsonl").open()
    )
    assert (out / "predictions.jsonl").read_bytes() == (root / "ref" / "predictions.jsonl").read_bytes()
    assert json.loads((out / "metrics.json").read_text()) == json.loads((root / "ref" / "metrics.json").read_text())
    assert not list(out.glob("predictions.part*"))


# A slow fake method in a subprocess (no model: the files are what is tested), killed with SIGKILL mid-run.
KILL_SCRIPT = """
import sys, time

from tests.bench.test_runner import FakeMethod
from vcontrast.bench.runner import evaluate


class SlowMethod(FakeMethod):
    def predict(self, items, images):
        if self.calls:  # the first batch gets written at once; the run is killed while the second one "runs"
            time.sleep(float(sys.argv[3]))
        return super().predict(items, images)


evaluate("sugarcrepe", sys.argv[1], method=SlowMethod(), out_dir=sys.argv[2], batch_size=2, show_progress=False)
"""


def test_killed_run_resumes_to_the_same_result(tmp_path, make_image):
    data = write_sugarcrepe(tmp_path / "data", make_image, n=7)
    reference = evaluate("sugarcrepe", data, method=FakeMethod(), out_dir=tmp_path / "ref", batch_size=2)
    script = tmp_path / "kill_eval.py"
    script.write_text(KILL_SCRIPT)
    out = tmp_path / "killed"
    cmd = [sys.executable, str(script), str(data), str(out), "30"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    part = out / "predictions.part0.jsonl"
    try:
        deadline = time.monotonic() + 120
        while not (part.is_file() and part.read_bytes().count(b"\n") >= 2) and proc.poll() is None:
            assert time.monotonic() < deadline, "the run wrote nothing within 120 s"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read()[-3000:]
    assert part.read_bytes().count(b"\n") == 2 and not (out / "metrics.json").exists()  # one batch of 2 written

    resumed = FakeMethod()
    assert evaluate("sugarcrepe", data, method=resumed, out_dir=out, batch_size=2, show_progress=False) == reference
    assert [len(batch) for batch in resumed.calls] == [2, 2, 1]
    assert (out / "predictions.jsonl").read_bytes() == (tmp_path / "ref" / "predictions.jsonl").read_bytes()
