"""The ROS shell commands of the tests (test_ros2_cli, test_readme_commands)
run the distribution the suite is counted under (issue 22): Kilted's suite
its .venv and install/, Jazzy's its .venv-jazzy and install-jazzy/, never
the other's."""

from __future__ import annotations

import sys
from pathlib import Path

import ros2_shell
from ros2_shell import REPO


def test_the_shell_runs_this_suites_venv_and_install_tree() -> None:
    proc = ros2_shell.bash('command -v python; echo "$COLCON_PREFIX_PATH"', REPO, timeout=60)
    assert proc.returncode == 0, proc.stderr[-2000:]
    python, prefix = proc.stdout.strip().splitlines()[-2:]
    assert Path(python).parent == Path(sys.prefix) / "bin" == ros2_shell.VENV_BIN
    assert Path(prefix.split(":")[0]).resolve() == ros2_shell.INSTALL.resolve()
    # the README's own line is Kilted's; Jazzy's suite runs its translation
    assert (ros2_shell.distro_setup_line() == ros2_shell.setup_line()) == ros2_shell.README_TREES
    if not ros2_shell.README_TREES:
        assert ".venv-jazzy/" in ros2_shell.distro_setup_line()
        assert "install-jazzy/" in ros2_shell.distro_setup_line()
