"""Shared pytest set-up. Bag fixtures live in test/harness/bag_harness.py,
node fixtures in test/harness/node_harness.py."""

import sys
from pathlib import Path

import pytest

# Tests mirror the package's layers (core/, ros/, bag/, cli/); the DDS and
# bag fixtures live in harness/, the development tools they drive (the bag
# player, the sample-bag writer) in the repository's tools/.
_HERE = Path(__file__).resolve().parent
for _path in (_HERE / "harness", _HERE.parent / "tools"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

pytest_plugins = ["bag_harness", "node_harness"]


# ---------------------------------------------------------------- tiny models (library tests)


@pytest.fixture(scope="session")
def tiny_state_dicts():
    """(clip, dino) state dicts of the tiny random models, seed 0 (OpenAI and
    DINO key names). Shared: copy before changing them."""
    from cass_ros.core.models import tiny_random_state_dicts

    return tiny_random_state_dicts(seed=0)


@pytest.fixture(scope="session")
def tiny_models(tiny_state_dicts):
    """In-memory CassModels of the tiny random CLIP and DINO (seed 0), built
    the way the checkpoint loader builds them. Not to be modified."""
    from kernel_probe import tiny_models

    return tiny_models(tiny_state_dicts)


@pytest.fixture(scope="session")
def text_cache_dir(tmp_path_factory) -> str:
    """A weights_cache_dir shared by the library tests, so that each class
    name is encoded (80 templates) once per session."""
    return str(tmp_path_factory.mktemp("cass_cache"))


@pytest.fixture(scope="session")
def tiny_weights(tmp_path_factory) -> tuple[str, str]:
    """(clip_path, dino_path): tiny random checkpoints, seed 0, whose
    architecture the loader infers. Used by the CLI, node and bag tests."""
    from cass_ros.core.models import save_tiny_random_checkpoints

    return save_tiny_random_checkpoints(tmp_path_factory.mktemp("weights"), seed=0)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "arithmetic: compares two runs whose arithmetic differs (batch, crops, "
        "kernels, precision) with the agreement rule; test/core/test_instruction_sets.py runs "
        "the cheap ones again under a second instruction set")
