"""The benches' verdicts (bench/verdict.py), their hit-rate helpers (bench/common.py), the table
`make bench` prints (bench/table.py), the `--spec` option and the GPU bench's CPU dry run
(bench/gpu.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench.common import ci95_per_100, first_hit_seconds, per_100, spec_option
from bench.table import main as table_main
from bench.verdict import Target, report, verdicts

ROOT = Path(__file__).resolve().parents[1]


def test_targets_meet_miss_and_skip() -> None:
    targets = [
        Target("speedup", ">=", 3),
        Target("ratio", "<=", 1.5),
        Target("same", "==", True),
        Target("absent", "<", 1),
        Target("ratio", ">", 0, name="ratio_positive"),
    ]
    found = verdicts({"speedup": 2.9, "ratio": 1.5, "same": True, "bench": "x"}, targets)
    assert found == {"speedup": False, "ratio": True, "same": True, "absent": None, "ratio_positive": True}
    assert verdicts({"ratio": float("nan")}, [Target("ratio", "<=", 1)]) == {"ratio": False}
    with pytest.raises(ValueError, match="share a name"):
        verdicts({}, [Target("a", "<", 1), Target("a", ">", 0)])


def test_report_prints_one_json_line_with_verdicts_and_rules(capsys: pytest.CaptureFixture[str]) -> None:
    report("demo", {"speedup": 4.0}, [Target("speedup", ">=", 3, note="new")])
    line = capsys.readouterr().out.strip().splitlines()[-1]
    found = json.loads(line)
    assert found["bench"] == "demo" and found["speedup"] == 4.0
    assert found["targets"] == {"speedup": True}
    assert found["target_rules"] == {"speedup": "speedup >= 3 (new)"}
    assert len(found["load_1m"]) == 2


def write(folder: Path, name: str, out: str, rc: int) -> None:
    (folder / f"{name}.out").write_text(out)
    (folder / f"{name}.rc").write_text(f"{rc}\n")


def line(figures: dict[str, object], targets: list[Target], capsys: pytest.CaptureFixture[str]) -> str:
    report("x", figures, targets)
    return capsys.readouterr().out


def test_hit_rate_interval_and_first_hit_time() -> None:
    # 15 hits in 128 vectors: the discovery figure's interval as the docs quote it.
    assert ci95_per_100([True] * 15 + [False] * 113) == [7.2, 18.4]
    assert ci95_per_100([False] * 128)[0] == 0.0
    assert per_100([True] * 9 + [False] * 119) == 100 * 9 / 128 and per_100([]) == 0.0
    # Vectors train 8 at a time: a first hit in the third batch of four costs three quarters.
    found = [False] * 17 + [True] + [False] * 14
    assert first_hit_seconds(found, seconds=400.0, batch=8) == 300.0
    assert first_hit_seconds([False] * 32, seconds=400.0, batch=8) is None


def test_spec_option_reads_melbo_settings_and_refuses_bad_ones() -> None:
    assert spec_option(None) == {}
    assert spec_option(["positions=last:1", "source=10", "p=4"]) == {
        "positions": "last:1",
        "source": 10,
        "p": 4,
    }
    with pytest.raises(SystemExit, match="KEY one of"):
        spec_option(["prompts=x"])  # the bench owns prompts, vectors, seed and method
    with pytest.raises(SystemExit, match="last:k"):
        spec_option(["positions=last:0"])
    with pytest.raises(SystemExit, match="KEY=VALUE"):
        spec_option(["source"])


def test_table_passes_only_when_every_bench_finished_and_met_its_targets(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ok = line({"speedup": 4.0}, [Target("speedup", ">=", 3)], capsys)
    missed = line({"ratio": 2.5}, [Target("ratio", "<=", 2)], capsys)
    skipped = line({}, [Target("share", ">=", 0.4)], capsys)
    write(tmp_path, "fast", "progress\n" + ok, 0)
    write(tmp_path, "skipping", skipped, 0)
    sys.argv = ["table.py", str(tmp_path)]
    assert table_main() == 0
    shown = capsys.readouterr().out
    assert "speedup" in shown and "ok" in shown and "not measured" in shown

    write(tmp_path, "slow", missed, 0)
    assert table_main() == 1
    assert "FAIL" in capsys.readouterr().out

    write(tmp_path, "slow", ok, 0)
    write(tmp_path, "broken", "Traceback ...\n", 1)
    assert table_main() == 1
    shown = capsys.readouterr().out
    assert "CRASHED (exit status 1)" in shown and "failed: broken" in shown


@pytest.mark.slow
def test_gpu_bench_dry_runs_on_the_cpu() -> None:
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--dry-run"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["bench"] == "gpu" and found["dry_run"] is True
    for model in found["models"].values():
        assert model["train_steps_per_s"] > 0 and model["decode_tokens_per_s"]["1"] > 0


def test_gpu_bench_refuses_to_run_without_cuda() -> None:
    done = subprocess.run(
        [sys.executable, "bench/gpu.py", "--device", "cuda"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "CUDA_VISIBLE_DEVICES": ""},
    )
    assert done.returncode == 2
    assert "no CUDA device" in done.stderr
