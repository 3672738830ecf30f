"""The throughput benchmark runs and writes its results (times are never asserted)."""

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_relax_throughput_quick(tmp_path):
    out_json, out_md = tmp_path / "r.json", tmp_path / "r.md"
    subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "relax_throughput.py"), "--quick",
         "--configs", "seed001-demo", "--json", str(out_json), "--markdown", str(out_md)],
        check=True, cwd=ROOT, capture_output=True, timeout=600,
    )
    text = out_json.read_text()
    assert "seed001-demo" in text and "speed" in text
    json.loads(text)
    assert "| seed001-demo |" in out_md.read_text()
