"""scripts/bench.py's helpers on hand-made timings: the PASS/MISS lines of the CPU and the GPU targets, the tables'
columns, the JSON rows, the method variants of --jacobians both and the CUDA-graphs guard (no timing here)."""

from __future__ import annotations

import dataclasses
import importlib.util
import sys
from pathlib import Path

import pytest
import torch

from mtl_train.engine.trainer import TrainerSettings

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "bench.py"
spec = importlib.util.spec_from_file_location("bench_script", SCRIPT)
bench = importlib.util.module_from_spec(spec)
sys.modules["bench_script"] = bench  # dataclasses look their module up while the script runs
spec.loader.exec_module(bench)

Row = bench.Row
KINDS = {"ew": "loss", "uw": "loss", "mgda": "gradient", "pcgrad": "gradient"}


def lenet_results(k: int, rows: list, others: dict[str, float], other_peaks: dict | None = None):
    """Results of MultiLeNet at batch 256 with hand-made timings."""
    return bench.Results(bench.SETUPS["lenet"], 256, k, rows, others, other_peaks or dict.fromkeys(others), KINDS)


def k4_results(ew_graphs: Row):
    rows = [Row("ew", "-", ms=10.0), ew_graphs, Row("uw", "-", ms=10.4), Row("mgda", "rep", ms=11.6),
            Row("mgda", "params", jacobian="batched", ms=15.5), Row("pcgrad", "params", jacobian="loop", ms=17.0)]
    others = {"hand-written": 9.8, "data": 0.2, "k backwards": 20.0, "jacobian batched": 11.0, "jacobian loop": 21.0}
    return lenet_results(4, rows, others)


def test_the_cuda_targets_at_k4_on_hand_made_timings() -> None:
    lines = bench.target_lines(k4_results(Row("ew", "-", graphs=True, ms=4.5)), "cuda")
    assert lines == [
        "PASS MultiLeNet, k=4: EW / hand-written loop = 1.020 (target <= 1.05)",
        "PASS MultiLeNet, k=4: data time / EW step = 2.00% (target < 3%)",
        "PASS MultiLeNet, k=4: slowest loss-based method uw = 1.040 x EW (target <= 1.05)",
        "MISS MultiLeNet, k=4: slowest gradient method in rep mode mgda = 1.160 x EW (target <= 1.15)",
        "PASS MultiLeNet, k=4: params-mode Jacobian, trunk batched, what jacobian=auto uses on cuda = 0.550 x k "
        "sequential backwards (target <= 0.6)",
        "MISS MultiLeNet, k=4: params-mode Jacobian, trunk loop = 1.050 x k sequential backwards (target <= 0.6)",
        # pcgrad's params row ran the loop: not a batched-trunk row
        "PASS MultiLeNet, k=4: slowest gradient method in params mode with the batched trunk mgda = 1.550 x EW "
        "(target <= 1.6)",
        "PASS MultiLeNet, k=4: EW with CUDA graphs / hand-written loop (eager) = 0.459 (target <= 0.5)",
    ]


def test_the_cpu_keeps_its_thresholds_and_a_graphs_fallback_is_named() -> None:
    fell_back = Row("ew", "-", graphs=True, ms=9.0, fallback="trainer.amp=fp16 is not graph-safe")
    lines = bench.target_lines(k4_results(fell_back), "cpu")
    assert lines[3] == "PASS MultiLeNet, k=4: slowest gradient method in rep mode mgda = 1.160 x EW (target <= 1.25)"
    assert lines[4:6] == [
        "PASS MultiLeNet, k=4: params-mode Jacobian, trunk batched = 0.550 x k sequential backwards (target <= 0.6)",
        "MISS MultiLeNet, k=4: params-mode Jacobian, trunk loop, what jacobian=auto uses on cpu = 1.050 x k "
        "sequential backwards (target <= 0.6)"]
    assert lines[6:] == ["MISS MultiLeNet, k=4: EW with CUDA graphs / hand-written loop (eager) = 0.918 (target <= "
                         "0.5); the trainer ran eager steps: trainer.amp=fp16 is not graph-safe"]  # no params-vs-EW


def test_k8_reports_the_largest_params_mode_peak_beside_ews() -> None:
    rows = [Row("ew", "-", ms=10.0, peak_mib=100.0), Row("mgda", "rep", ms=11.0, peak_mib=900.0),
            Row("mgda", "params", jacobian="batched", ms=20.0, peak_mib=250.0),
            Row("pcgrad", "params", jacobian="batched", ms=21.0, peak_mib=400.0),
            Row("pcgrad", "params", jacobian="loop", jacobian_choice="loop", ms=30.0, peak_mib=800.0)]
    lines = bench.target_lines(lenet_results(8, rows, {"hand-written": 10.0, "data": 0.1}), "cuda")
    assert lines[-1] == ("INFO MultiLeNet, k=8: peak GPU memory of a step, EW = 100.0 MiB; params mode with the "
                         "batched trunk up to 400.0 MiB (pcgrad, 4.00 x EW)")
    assert not any("graphs" in line or "params mode with the batched trunk mgda" in line for line in lines)


def test_the_tables_add_peak_and_fallback_columns_only_when_measured(capsys: pytest.CaptureFixture) -> None:
    rows = [Row("ew", "-", ms=10.0, peak_mib=100.0), Row("ew", "-", graphs=True, ms=4.0, peak_mib=12.5),
            Row("mgda", "params", jacobian="loop", jacobian_choice="loop", graphs=True, ms=30.0, peak_mib=50.0,
                fallback="method not graph-safe")]
    others = {"hand-written": 8.0, "hand-written graphs": 3.0, "data": 0.1, "k backwards": 20.0,
              "jacobian batched": 10.0}
    peaks = {"hand-written": 90.0, "hand-written graphs": 11.0, "data": 0.0, "k backwards": 5.0,
             "jacobian batched": 7.26}
    bench.print_tables(lenet_results(2, rows, others, peaks))
    assert capsys.readouterr().out.splitlines() == [
        "",
        "| method | k | mode | ms/step | ratio to EW | peak MiB | graphs fallback |",
        "|---|---|---|---|---|---|---|",
        "| ew | 2 | - | 10.0 | 1.00 | 100.0 |  |",
        "| ew graphs | 2 | - | 4.0 | 0.40 | 12.5 | - |",
        "| mgda graphs | 2 | params/loop | 30.0 | 3.00 | 50.0 | method not graph-safe |",
        "| _hand-written_ | 2 | - | 8.00 | 0.800 | 90.0 |  |",
        "| _hand-written graphs_ | 2 | - | 3.00 | 0.300 | 11.0 |  |",
        "| _data_ | 2 | - | 0.10 | 0.010 | 0.0 |  |",
        "",
        "| per-task gradients (shared params, one graph) | k | ms | ratio to k backwards | peak MiB |",
        "|---|---|---|---|---|",
        "| k backwards | 2 | 20.0 | 1.00 | 5.0 |",
        "| jacobian batched | 2 | 10.0 | 0.50 | 7.3 |",
    ]
    bench.print_tables(lenet_results(2, [Row("ew", "-", ms=10.0)], {"hand-written": 8.0, "data": 0.1,
                                                                     "k backwards": 20.0}))
    assert capsys.readouterr().out.splitlines()[1:4] == ["| method | k | mode | ms/step | ratio to EW |",
                                                         "|---|---|---|---|---|", "| ew | 2 | - | 10.0 | 1.00 |"]


def test_json_records_hold_every_field_with_ratios_to_eager_ew() -> None:
    rows = [Row("ew", "-", ms=10.0), Row("mgda", "params", jacobian="batched", jacobian_choice="batched",
                                         graphs=True, ms=25.0, peak_mib=3.5, fallback="why")]
    records, others = bench.json_records(lenet_results(4, rows, {"hand-written": 8.0}))
    assert records[1] == {"setup": "MultiLeNet", "batch_size": 256, "k": 4, "method": "mgda", "mode": "params",
                          "jacobian": "batched", "graphs": True, "ms": 25.0, "ratio_to_ew": 2.5, "peak_mib": 3.5,
                          "fallback": "why"}
    assert others == [{"setup": "MultiLeNet", "batch_size": 256, "k": 4, "name": "hand-written", "ms": 8.0,
                       "ratio_to_ew": 0.8, "peak_mib": None}]


def test_rows_are_labelled_by_mode_jacobian_and_graphs() -> None:
    assert Row("ew", "-", graphs=True).label == "ew [-] graphs"
    assert Row("mgda", "params", jacobian_choice="loop").label == "mgda [params/loop]"
    assert Row("mgda", "params").label == "mgda [params]"


def test_jacobians_both_times_params_mode_with_each_trunk() -> None:
    tasks = ["a", "b"]
    mgda = bench.variants("mgda", tasks, "both")
    assert [(mode, choice) for mode, choice, _ in mgda] == [("rep", None), ("params", "batched"), ("params", "loop")]
    assert [factory().trunk_jacobian.jacobian for _, _, factory in mgda] == ["auto", "batched", "loop"]
    assert [(mode, choice) for mode, choice, _ in bench.variants("db_mtl", tasks, "both")] == [
        ("params", "batched"), ("params", "loop")]
    assert [(mode, choice) for mode, choice, _ in bench.variants("mgda", tasks)] == [("rep", None), ("params", None)]
    assert [(mode, choice) for mode, choice, _ in bench.variants("ew", tasks, "both")] == [("-", None)]


def test_graphs_entries_need_cuda_and_a_trainer_that_offers_them() -> None:
    assert bench.graphs_unavailable(torch.device("cpu")) == "CUDA graphs need a CUDA device (this run: cpu)"
    offered = "cuda_graphs" in {field.name for field in dataclasses.fields(TrainerSettings)}
    assert bench.graphs_unavailable(torch.device("cuda")) == (
        None if offered else "this mtl_train's TrainerSettings has no cuda_graphs setting")


def test_the_new_flags_default_to_the_old_behaviour() -> None:
    args = bench.parse_args([])
    assert (args.graphs, args.jacobians, args.json) == ("off", "default", None)
    assert bench.GRAPHS_OPTIONS[args.graphs] == (False,)
    with pytest.raises(SystemExit):
        bench.parse_args(["--graphs", "always"])
