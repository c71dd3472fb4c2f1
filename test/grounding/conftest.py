"""Fixtures shared by the grounding tests."""
import pytest


@pytest.fixture(scope="module")
def text_model():
    """The real all-MiniLM-L6-v2 label model (installed by scripts/setup.sh)."""
    from m3_ros.foundation import FoundationConfig, load_models
    m = load_models(FoundationConfig(models=["minilm_labels"]))
    if "minilm_labels" not in m:
        pytest.fail("MiniLM weights are not installed: run scripts/setup.sh (a broken setup, not a reason to skip)")
    return m["minilm_labels"]
