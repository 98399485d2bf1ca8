"""lmms-eval integration: CRG as an lmms-eval model (`--model vcontrast_crg`) and the `vcontrast lmms-eval` launcher.

lmms-eval (github.com/EvolvingLMMs-Lab/lmms-eval) is optional: `pip install 'vcontrast[lmms]'`. Nothing here imports
it until a model is built or the launcher runs. The model class lives in `vcontrast.bench.lmms.model`; lmms-eval
finds it through its model registry, either because `vcontrast lmms-eval` registered it before starting lmms-eval,
or through the `lmms_eval.models` entry point vcontrast declares (so a plain `lmms-eval --model vcontrast_crg` works
where vcontrast is installed).

Examples:

```bash
vcontrast lmms-eval --model vcontrast_crg \\
    --model_args pretrained=checkpoints/llava-1.5-7b-hf,alpha=1.0,proposer=grounding-dino,contrast=blackout \\
    --tasks mme --batch_size 1 --output_path out/lmms
```
"""

from __future__ import annotations

from typing import Any

MODEL_NAME = "vcontrast_crg"
CLASS_PATH = "vcontrast.bench.lmms.model.VContrastCRG"
INSTALL_HINT = "lmms-eval is not installed: pip install 'vcontrast[lmms]' (see docs/eval.md, 'lmms-eval')"


def manifest() -> Any:
    """The lmms-eval `ModelManifest` of `vcontrast_crg` (the payload of vcontrast's `lmms_eval.models` entry point)."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return ModelManifest(model_id=MODEL_NAME, simple_class_path=CLASS_PATH)


def register() -> None:
    """Register `vcontrast_crg` with lmms-eval's model registry (idempotent).

    Raises:
        `ValueError`: lmms-eval is not installed.
    """
    try:
        from lmms_eval.models import MODEL_REGISTRY_V2
    except ImportError as e:
        raise ValueError(f"{INSTALL_HINT} ({e})") from e
    MODEL_REGISTRY_V2.register_manifest(manifest(), overwrite=True)


def run_lmms_eval(args: list[str]) -> int:
    """Run lmms-eval's command line with `args` after registering `vcontrast_crg`; returns the exit status.

    `--model` defaults to `vcontrast_crg`. lmms-eval prints its own results table and files; it logs a failed
    evaluation and carries on, so a run that produced no results is reported here as status 1.

    Args:
        args (`list[str]`): lmms-eval's arguments, e.g. `["--tasks", "mme", "--model_args", "alpha=1.0"]`.
    """
    register()
    import sys

    from lmms_eval.__main__ import cli_evaluate_single, parse_eval_args

    args = list(args)
    if not any(a == "--model" or a.startswith("--model=") for a in args):
        args = ["--model", MODEL_NAME, *args]
    saved = sys.argv
    sys.argv = ["lmms-eval", *args]  # lmms-eval's parser reads sys.argv
    try:
        _, namespace = parse_eval_args()
    finally:
        sys.argv = saved
    results, _ = cli_evaluate_single(namespace)
    if results is None:
        return 1
    print(format_results(results))  # noqa: T201 (the launcher's output)
    return 0


def format_results(results: dict) -> str:
    """`task  metric  value` lines of an lmms-eval results dict (stderr and alias entries left out).

    Examples:

    ```python
    >>> print(format_results({"results": {"mme": {"alias": "mme", "acc,none": 0.5, "acc_stderr,none": 0.1}}}))
    task  metric  value
    mme   acc     0.5000
    ```
    """
    rows = [
        (task, key.split(",")[0], f"{value:.4f}")
        for task, metrics in sorted(results.get("results", {}).items())
        for key, value in metrics.items()
        if key != "alias" and "_stderr" not in key and isinstance(value, (int, float))
    ]
    header = ("task", "metric", "value")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    return "\n".join(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]}".rstrip() for r in [header, *rows])
