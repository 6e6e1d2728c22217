"""//python:compare_filters on the shipped learned_filter_v2: real numbers side by side, and bad input."""

import json
import os
import subprocess
from pathlib import Path

TOOL = Path.cwd() / "python" / "compare_filters"


def run(*args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUILD_")}
    return subprocess.run([str(TOOL), *map(str, args)], capture_output=True, text=True, env=env, timeout=600)


def test_val_split_puts_the_filter_beside_ffmpeg_and_its_int8(tmp_path):
    report, png = tmp_path / "c.json", tmp_path / "c.png"
    # The registry's int8 again under another label: a candidate identical to the first must come out
    # with a zero paired difference, never "measurable".
    int8 = Path.cwd() / "model" / "tiny" / "learned_filter_v2.int8.onnx"
    r = run("--split", "val", "--int8", f"again={int8}", "--out-json", report, "--out-png", png)
    assert r.returncode == 0, r.stderr[-2000:]
    rep = json.loads(report.read_text())
    rows = {k: v["all"] for k, v in rep["rows"].items()}
    assert {"fp32", "registry int8", "again", "ffmpeg spp", "ffmpeg deblock"} <= set(rows)
    assert rows["fp32"]["psnr_gain_db"] > rows[f"{rep['best_ffmpeg']}"]["psnr_gain_db"] > 0
    assert 0.95 <= rows["registry int8"]["kept_of_fp32_gain"] < 1.0
    assert rows["again"] == rows["registry int8"]
    assert rep["paired_vs_first_int8"]["again"] == {"mean_db": 0.0, "two_se_db": 0.0}
    assert rep["n"] == 704 and rep["split"] == "val" and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "| mpeg2 q20 |" in r.stdout and "(measurable)" not in r.stdout


def test_bad_candidate_and_wrong_model_exit_2_without_writing(tmp_path):
    report = tmp_path / "c.json"
    r = run("--int8", "no-equals-sign", "--out-json", report)
    assert r.returncode == 2 and "expected LABEL=PATH" in r.stderr and "Traceback" not in r.stderr
    r = run("--int8", f"x={tmp_path / 'missing.onnx'}", "--out-json", report)
    assert r.returncode == 2 and "missing.onnx" in r.stderr and "not found" in r.stderr
    r = run("--id", "learned_filter_v1", "--out-json", report)
    assert r.returncode == 2 and "restoration corpus" in r.stderr
    assert not report.exists()
