"""The benchmark suite's plumbing (python -m benchmarks --tiny): every area runs on a tiny case,
and the CSV and JSON of the run have the common schema. Timings are not checked."""
import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--tiny", "--device", "cpu",
                           "--out", str(out), "--no-plots", "--no-progress"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return out, proc.stdout


def test_csv_has_the_schema(run):
    sys.path.insert(0, REPO)
    from benchmarks import AREAS
    from benchmarks._common import CSV_COLUMNS
    out, _ = run
    (path,) = [p for p in out.iterdir() if p.suffix == ".csv"]
    assert path.name.endswith("_cpu_tiny.csv")
    with open(path) as f:
        reader = csv.DictReader(f)
        assert reader.fieldnames == CSV_COLUMNS
        rows = list(reader)
    assert {r["area"] for r in rows} == set(AREAS)
    ok = [r for r in rows if r["status"] == "ok"]
    assert {r["provider"] for r in ok} >= {"sparsedistill", "reference", "torch_eager",
                                           "torch_prune", "dense", "torch_csr"}
    for r in ok:
        assert float(r["p20_ms"]) <= float(r["p50_ms"]) <= float(r["p80_ms"])
        assert r["cpu_model"] and r["torch_version"] and r["git_commit"] and r["timestamp"]
        if r["provider"] == r["stock_provider"]:
            assert float(r["speedup_vs_stock"]) == pytest.approx(1.0)
        assert float(r["gbps"]) > 0 and float(r["frac_copy_bw"]) > 0
    # CUDA-only peers are reported as skipped rows with a reason, never as failures
    skipped = {r["provider"]: r["note"] for r in rows if r["status"] == "skipped"}
    assert "liger" in skipped and "semi_structured" in skipped
    assert not [r for r in rows if r["status"] == "error"]


def test_json_and_table(run):
    from benchmarks._common import MACHINE_FIELDS, ROW_FIELDS
    out, stdout = run
    (path,) = [p for p in out.iterdir() if p.suffix == ".json"]
    data = json.loads(path.read_text())
    assert data["schema"] == ROW_FIELDS and data["mode"] == "tiny"
    assert all(k in data["machine"] for k in MACHINE_FIELDS)
    assert data["copy_bandwidth_gbps"] > 0
    assert all(set(ROW_FIELDS) <= set(r) for r in data["rows"])
    assert data["checks"] and all(c["status"].startswith("ok") for c in data["checks"])
    for area in ("distill", "prune", "sparse_linear"):
        assert f"## {area}" in stdout
    assert "plots skipped" in stdout
    assert (out / path.name.replace(".json", ".md")).exists()
