"""Shared fixtures. Service fixtures live in their own plugin modules listed below."""

from __future__ import annotations

import os
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from flows.runtime_env import configure_runtime  # noqa: E402 - before anything imports prefect

configure_runtime()
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

pytest_plugins = ["fixtures_models", "fixtures_label_studio", "fixtures_mlflow", "fixtures_prefect", "fixtures_projects"]
