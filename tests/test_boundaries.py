"""The API process never imports torch (nor diffusers or transformers): it must start fast and stay small."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

_PROBE = """
import sys, tempfile
from reimagine.config import Settings
from reimagine.api.app import create_app
from fastapi.testclient import TestClient
settings = Settings(data_dir=tempfile.mkdtemp(), workers=0, auth=False)
with TestClient(create_app(settings)) as client:
    assert client.get("/openapi.json").status_code == 200
    assert client.post("/bria/reimagine/3.2", json={"prompt": "x", "truncate_prompt": False,
                       "prompt_enhancer": False}).status_code == 200
heavy = sorted(name for name in ("torch", "diffusers", "transformers", "cv2") if name in sys.modules)
print(",".join(heavy))
"""


def test_api_process_imports_no_ml_stack(tmp_path: Path) -> None:
    result = subprocess.run([sys.executable, "-c", _PROBE], capture_output=True, text=True, cwd=tmp_path, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "", f"the API imported {result.stdout.strip()}"
