"""Puts python/ on sys.path, so the tests run without installing the package,
and gives the fixtures the test files share."""
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, Dict, List

import pytest

PYTHON_DIR = Path(__file__).resolve().parent.parent
REPO = PYTHON_DIR.parent
DATA = Path(__file__).resolve().parent / "data"
if str(PYTHON_DIR) not in sys.path:
    sys.path.insert(0, str(PYTHON_DIR))


@pytest.fixture
def trial_env(tmp_path: Path) -> Callable[..., Dict[str, str]]:
    """make(**overrides) -> a BATCHD_* environment with an empty report file."""

    def make(**overrides: Any) -> Dict[str, str]:
        report = tmp_path / "report.jsonl"
        report.write_text("")
        env = {
            "BATCHD_BATCH_SIZE": "16",
            "BATCHD_STEPS": "6",
            "BATCHD_WARMUP_STEPS": "2",
            "BATCHD_SEED": "3",
            "BATCHD_DEVICE": "cpu",
            "BATCHD_PRECISION": "f32",
            "BATCHD_LR_SCHEDULE": json.dumps({"kind": "constant", "lr": 0.05}),
            "BATCHD_REPORT": str(report),
        }
        for key, value in overrides.items():
            name = key if key.startswith("BATCHD_") else "BATCHD_" + key.upper()
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value if isinstance(value, str) else json.dumps(value)
        return env

    return make


def read_report(env: Dict[str, str]) -> List[Dict[str, Any]]:
    """The report lines a trial wrote, parsed."""
    with open(env["BATCHD_REPORT"], encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@pytest.fixture
def recommendation_data() -> Dict[str, Any]:
    """A real `batchd advise --json` answer (trimmed, see data/README.md)."""
    with open(DATA / "recommendation.json", encoding="utf-8") as f:
        return json.load(f)


def torch_or_skip() -> Any:
    return pytest.importorskip("torch")


os.environ.pop("BATCHD_URL", None)
os.environ.pop("BATCHD_TOKEN_FILE", None)
