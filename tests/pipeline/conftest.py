"""One tiny pipeline for the whole directory (built once: the suite stays fast)."""

from __future__ import annotations

import pytest
import torch

from reimagine.config import Settings
from reimagine.worker.pipeline import ReimaginePipeline, load_pipeline


@pytest.fixture(scope="session")
def pipe() -> ReimaginePipeline:
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    return load_pipeline(Settings(model="tiny"))
