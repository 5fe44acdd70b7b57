"""The benchmark scripts run end to end at a tiny size and print their ratios (their timings are not tested)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(script: str, *args: str) -> str:
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], capture_output=True, text=True,
                          timeout=600, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_train_throughput_prints_each_variant_against_the_dataloader_baseline(tmp_path):
    out = run("train_throughput.py", "--device", "cpu", "--width", "4", "--images", "256", "--rounds", "1",
              "--json", str(tmp_path / "r.json"))
    assert "baseline: DataLoader, per-image transforms" in out and "1.00x" in out
    assert "suite loop, fp32, channels_last" in out and "suite loop, fp32, NCHW" in out
    assert (tmp_path / "r.json").read_text().count("images_per_s") == 1


def test_train_throughput_refuses_bad_sizes():
    done = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "train_throughput.py"), "--rounds", "0"],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 2 and "--rounds must be >= 1, got 0" in done.stderr


def test_stage2_step_compares_the_in_place_step_with_three_others():
    out = run("stage2_step.py", "--width", "4", "--batch-size", "16", "--repeats", "1", "--device", "cpu")
    for line in ("ratio in place / plain", "ratio in place / copy per batch", "ratio in place / official"):
        assert line in out


def test_explorers_benchmark_times_each_explorer(tmp_path):
    out = run("explorers.py", "--profile", "smoke", "--cache-dir", str(tmp_path / "cache"), "--changes", "2")
    for label in ("trigger (attack, strength)", "stage 1 (n, m)", "brightness (offset)"):
        assert label in out and "median" in out
