"""benchmarks/gpu_check.py, the one-command GPU check (#23), dry-run on the CPU at tiny sizes: every check and
path runs, and the JSON and markdown results land in one folder."""
import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_checks_measures_projects_and_writes_its_results(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), "--dry-run", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    checks = {c["check"]: c for c in report["checks"]}
    assert set(checks) == {"arch list", "fp16 autocast + GradScaler", "bf16 autocast", "channels_last",
                           "torch.compile", "device data path", "sync audit", "exact resume", "deterministic mode"}
    assert all(c["ok"] for c in checks.values()), checks
    rows = {r["model"]: r for r in report["throughput"]}
    for model in ("R18", "LR18_L2(rpe)", "LR18_L3(lc)", "R34"):
        assert all(rows[model][k] > 0 for k in ("bare", "device", "host", "eval", "device/bare", "host/bare"))
    assert rows["R18 (compiled)"]["device"] > 0
    projection = report["projection"]
    assert len(projection["runs"]) == 10 and projection["total_h"] > 0 and projection["verdict"].startswith("dry run")
    assert {r["how"] for r in projection["runs"]} >= {"measured", "R + measured lambda-layer cost at its stage"}
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert "dry run" in text and "| model | bare step | loop, device data path |" in text and "40 runs:" in text
