"""benchmarks/benchmark_fuzz.py's summary and its README rendering, on hand-made counts."""

import pytest

from benchmarks import benchmark_fuzz, readme_fuzz


def test_summary_counts_inputs_and_broken_promises():
    counts = {"convert: random flags": {"exit 0": 2, "exit 2": 3},
              "tflq.qat: random arrays": {"traceback": 1, "exit 1": 2, "ValueError": 4}}
    summary = benchmark_fuzz.summarize(1, counts, 123.45, 7)
    assert summary["targets"]["convert: random flags"] == {
        "inputs": 5, "outcomes": {"exit 0": 2, "exit 2": 3}, "broken": 0}
    assert summary["targets"]["tflq.qat: random arrays"]["broken"] == 3
    assert summary["total_inputs"] == 12 and summary["total_broken"] == 3
    assert summary["examples_setting"] == 7 and summary["seconds"] == 123.5
    assert summary["versions"]["hypothesis"]
    regions = readme_fuzz.render_fuzz(summary)
    assert "| convert: random flags | 5 | 2 | 3 | – | – | – | 0 |" in regions["table"]
    assert "| tflq.qat: random arrays | 7 | – | – | – | – | 4 | 3 |" in regions["table"]
    assert regions["notes"].startswith("12 inputs in all; **3 runs broke the contract** (pytest exit 1)")


def test_bad_examples_value_exits_2(capsys):
    with pytest.raises(SystemExit) as e:
        benchmark_fuzz.main(["--examples", "0"])
    assert e.value.code == 2
    assert capsys.readouterr().err == "error: --examples must be at least 1. Received: 0\n"
