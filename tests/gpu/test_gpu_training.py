"""GPU only (skipped without CUDA): the SFT + DPO path on a random model with Llama-3.1-8B's
architecture in bf16 with LoRA, as scripts/gpu_train_check.py runs it (figures in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
ROOT = Path(__file__).resolve().parents[2]


def test_sft_and_dpo_of_an_8b_architecture_on_one_gpu(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "gpu_train_check.py"), "--out", str(tmp_path),
                           "--sft-steps", "6", "--dpo-steps", "2"], capture_output=True, text=True, timeout=1200,
                          check=False)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "gpu_train_check.json").read_text())
    assert report["sft_steps"] == 6 and report["dpo_steps"] == 2
    assert report["sft_loss_last"] < report["sft_loss_first"]
