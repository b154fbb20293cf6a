"""The node's threads off the executor (docs/ros-interface.md, "Off the
executor"): the frame worker, the prompt worker, and what both hand
between them (the segmenter, parameters and prompt set in force)."""
