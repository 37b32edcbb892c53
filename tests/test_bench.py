"""The norm benchmark runs end to end (tiny sizes) and reports ratios to LayerNorm."""

import json
import subprocess
import sys

import pytest

from vision.bench import BASELINE, NORM_NAMES, bench_norms


def test_bench_norms_reports_every_norm_and_mode(tmp_path, capsys):
    out = tmp_path / "norms.json"
    results = bench_norms(widths=(32,), batch=2, tokens=5, dtypes=("float32", "bfloat16"), modes=("eager",),
                          rounds=2, iters=1, out=str(out))
    table = capsys.readouterr().out
    assert "| mhseednorm | eager |" in table and "| seednorm | unfused |" in table
    rows = {(r.norm, r.mode, r.dtype) for r in results}
    for name in (BASELINE, "torch.nn.RMSNorm") + NORM_NAMES:
        assert (name, "eager", "float32") in rows and (name, "eager", "bfloat16") in rows
    for r in results:
        if r.norm == BASELINE:
            assert r.ratio == 1.0
        assert r.ms > 0
    payload = json.loads(out.read_text())
    assert len(payload["results"]) == len(results) and "CPU" in payload["machine"]


def test_bench_compiled_mode_runs():
    results = bench_norms(widths=(16,), batch=1, tokens=4, dtypes=("float32",), modes=("compiled",),
                          norms=("mhseednorm",), rounds=1, iters=1)
    assert {(r.norm, r.mode) for r in results} == {
        (BASELINE, "eager"), (BASELINE, "compiled"), ("torch.nn.RMSNorm", "compiled"), ("mhseednorm", "compiled")
    }
    assert [r.ratio for r in results if (r.norm, r.mode) == (BASELINE, "eager")] == [1.0]


def test_bench_rejects_unknown_names():
    with pytest.raises(ValueError, match="unknown norm 'groupnorm'"):
        bench_norms(norms=("groupnorm",))
    with pytest.raises(ValueError, match="unknown dtype 'float8'"):
        bench_norms(dtypes=("float8",))


def test_cli_runs_the_benchmark():
    cmd = [sys.executable, "-m", "vision.cli", "bench", "norms", "--widths", "[16]", "--batch", "1", "--tokens", "3",
           "--dtypes", "[float32]", "--modes", "[eager]", "--rounds", "1", "--iters", "1"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "| mhseednorm | eager |" in proc.stdout


def test_training_benchmarks_report_ratios_to_layernorm(tmp_path, capsys):
    from vision.bench import bench_dit, bench_train

    vit = bench_train(arch="vit_micro_patch2_8", norms=("mhseednorm",), batch=2, img_size=8, rounds=1, iters=1,
                      out=str(tmp_path / "vit.json"))
    dit = bench_dit(model="DiT-Mi/2", batch=2, input_size=8, in_channels=1, rounds=1, iters=1)
    text = capsys.readouterr().out
    assert set(vit) == {"layernorm", "mhseednorm"} and set(dit) == {"layernorm", "mhseednorm"}
    assert "| layernorm |" in text and "1.000x" in text and "steps/s" in text
    assert json.loads((tmp_path / "vit.json").read_text())["images/s"]["mhseednorm"] > 0
