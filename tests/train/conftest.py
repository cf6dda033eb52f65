import pytest

from arvc.data.demo import generate_demo_voice
from arvc.data.preprocess import preprocess


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """About 30 s of the demo voice, preprocessed once for every end-to-end training test."""
    root = tmp_path_factory.mktemp("voice")
    generate_demo_voice(root / "wav", seconds=30, sr=16000, seed=1)
    preprocess(root / "wav", root / "data", 16000, "pm", features="mel", feature_dim=80)
    return root / "data"
