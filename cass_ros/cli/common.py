"""What the command-line tools share: loading the models for one prompt set."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

from ..core.config import CassConfig, ConfigError
from ..core.prompts import PromptSet

if TYPE_CHECKING:
    from ..core.segmenter import PreparedPrompts, Segmenter


def load_segmenter(prog: str, config: CassConfig, prompt_set: PromptSet
                   ) -> tuple[Segmenter, PreparedPrompts] | None:
    """The segmenter and the prepared prompts, or None after one line
    ``<prog>: error: ...`` naming the setting (missing weights, bad device)."""
    # torch loads here, after the arguments and settings were checked, so
    # that --help and a bad flag answer at once
    from ..core.models import WeightsError
    from ..core.segmenter import Segmenter

    try:
        segmenter = Segmenter(config)
        return segmenter, segmenter.prepare_prompts(prompt_set)
    except (ConfigError, WeightsError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return None
