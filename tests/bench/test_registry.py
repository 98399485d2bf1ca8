"""Registry: names resolve lazily to Benchmark specs; unknown names list the known ones."""

import pytest

from vcontrast.bench import registry
from vcontrast.bench.metrics import METRICS
from vcontrast.bench.registry import BENCHMARKS, Benchmark, get_benchmark, list_benchmarks


def test_every_registered_benchmark_resolves():
    for name in BENCHMARKS:
        bench = get_benchmark(name)
        assert isinstance(bench, Benchmark) and bench.name == name
        for task, names in bench.metrics.items():
            assert all(n in METRICS for n in names), (name, task)
    assert get_benchmark("SugarCrepe") is get_benchmark("sugarcrepe")
    assert "refcoco+" in list_benchmarks()


def test_unknown_benchmark_lists_names():
    with pytest.raises(ValueError, match="known benchmarks: .*sugarcrepe"):
        get_benchmark("sugarcrap")


def test_limit_and_split_checks():
    with pytest.raises(ValueError, match="limit"):
        registry.check_limit(-1)
    with pytest.raises(ValueError, match="unknown split 'x'"):
        registry.select_splits("x", ("a", "b"), "demo")
    assert registry.select_splits(None, ("a", "b"), "demo") == ["a", "b"]
