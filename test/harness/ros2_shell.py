"""Run commands the way a user types them into a shell: after the README's
set-up line (venv + install tree), through bash, from a fresh environment.

Used by test/test_readme_commands.py (every shell command of the README)
and test/ros/test_ros2_cli.py (the ROS command-line tools against a node
started by ``ros2 launch``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "config" / "cass.yaml"


def _distro_trees() -> tuple[Path, Path]:
    """(venv, colcon install tree) of the distribution this suite runs under:
    the Makefile runs Kilted's tests from .venv with install/, Jazzy's from
    .venv-jazzy with install-jazzy/ (issue 22: the Jazzy half must start
    Jazzy's ros2 and node, not Kilted's)."""
    venv = Path(sys.prefix)
    if venv.parent.resolve() != REPO.resolve() or not venv.name.startswith(".venv"):
        venv = REPO / ".venv"   # run from elsewhere: the README's (Kilted) trees
    return venv, REPO / ("install" + venv.name[len(".venv"):])


VENV, INSTALL = _distro_trees()
VENV_BIN = VENV / "bin"
# The README's set-up line names Kilted's trees: True when this suite runs them.
README_TREES = VENV.name == ".venv"

# What a user's shell has that the test session's must not lend: the
# variables `source install/setup.bash` and venv activation set, and those
# of the ROS wheels' start-up hook (it re-executes each Python process once
# with LD_LIBRARY_PATH set and marks that it did). The README's set-up line
# has to produce them itself.
_SOURCED_VARS = ("AMENT_PREFIX_PATH", "CMAKE_PREFIX_PATH", "COLCON_PREFIX_PATH", "PYTHONPATH",
                 "VIRTUAL_ENV", "LD_LIBRARY_PATH", "ROS_PACKAGE_PATH", "PKG_CONFIG_PATH",
                 "_ROS_WHEELS_BOOTSTRAP_COMPLETE")


def user_env(**extra: str) -> dict[str, str]:
    """os.environ without the sourced variables and without the venv and
    install tree on PATH; keeps ROS_DOMAIN_ID and the discovery settings."""
    env = {k: v for k, v in os.environ.items() if k not in _SOURCED_VARS}
    keep = [p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep)
            if p and not p.startswith((str(REPO / ".venv"), str(REPO / "install")))
            and not p.startswith(str(VENV_BIN.resolve()))]
    env["PATH"] = os.pathsep.join(keep)
    env.pop("PYTHONHOME", None)
    env.update(extra)
    return env


def readme_blocks(lang: str, readme: Path = REPO / "README.md") -> list[tuple[int, str]]:
    """(line number, text) of each fenced block of ``lang`` in the README."""
    blocks: list[tuple[int, str]] = []
    lines = readme.read_text().splitlines()
    i = 0
    while i < len(lines):
        if lines[i].strip() == f"```{lang}":
            start = i + 1
            j = start
            while j < len(lines) and lines[j].strip() != "```":
                j += 1
            blocks.append((start + 1, "\n".join(lines[start:j])))
            i = j
        i += 1
    return blocks


def shell_commands(block: str) -> list[str]:
    """The commands of a bash block: continuation lines joined, a heredoc
    kept with its body, comment-only and blank lines dropped."""
    out: list[str] = []
    lines = block.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i].rstrip()
        i += 1
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        while line.endswith("\\") and i < len(lines):
            line = line[:-1].rstrip() + " " + lines[i].strip()
            i += 1
        heredoc = re.search(r"<<-?\s*'?\"?(\w+)'?\"?", line)
        if heredoc:
            body = [line]
            while i < len(lines):
                body.append(lines[i])
                i += 1
                if lines[i - 1].strip() == heredoc.group(1):
                    break
            line = "\n".join(body)
        out.append(line)
    return out


def strip_comment(command: str) -> str:
    """The command without a trailing `# comment` outside quotes (the key
    under which the tests file a README command)."""
    first, sep, rest = command.partition("\n")
    quote = ""
    for k, ch in enumerate(first):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
        elif ch == "#" and (k == 0 or first[k - 1].isspace()):
            first = first[:k].rstrip()
            break
    return first + sep + rest


def setup_line() -> str:
    """The README's set-up line (its block under 'Running the commands')."""
    text = (REPO / "README.md").read_text()
    section = text.split("## Running the commands below from this checkout", 1)[1]
    block = section.split("```bash", 1)[1].split("```", 1)[0]
    (command,) = shell_commands(block)
    return command


def distro_setup_line() -> str:
    """The README's set-up line for the distribution this suite runs under:
    itself for Kilted; with .venv-jazzy and install-jazzy/ for Jazzy."""
    line = setup_line()
    if README_TREES:
        return line
    out = re.sub(r"(?<![\w-])\.venv/", f"{VENV.name}/", line)
    out = re.sub(r"(?<![\w-])install/", f"{INSTALL.name}/", out)
    assert out != line, f"the README's set-up line names no .venv/ or install/: {line!r}"
    return out


def bash(command: str, cwd: Path, env: dict[str, str] | None = None, timeout: float = 300.0,
         setup: bool = True) -> subprocess.CompletedProcess:
    """``command`` through bash in ``cwd``, after the README's set-up line
    (run from the repository root, as the README says)."""
    script = (f"cd {shlex.quote(str(REPO))} && {distro_setup_line()} && cd {shlex.quote(str(cwd))} && "
              f"{command}") if setup else command
    return subprocess.run(["bash", "-c", script], cwd=cwd, env=env or user_env(),
                          capture_output=True, text=True, timeout=timeout)


def start_bash(command: str, cwd: Path, log: Path, env: dict[str, str] | None = None
               ) -> subprocess.Popen:
    """A long-running ``command`` (ros2 launch, a node) in its own process
    group, so that stop() can end it and everything it started."""
    script = (f"cd {shlex.quote(str(REPO))} && {distro_setup_line()} && cd {shlex.quote(str(cwd))} && "
              f"exec {command}")
    out = open(log, "wb")  # noqa: SIM115 - closed in stop()
    proc = subprocess.Popen(["bash", "-c", script], cwd=cwd, env=env or user_env(), stdout=out,
                            stderr=subprocess.STDOUT, start_new_session=True)
    proc._cass_log = out  # type: ignore[attr-defined]
    return proc


def stop(proc: subprocess.Popen, timeout: float = 30.0) -> int:
    """SIGINT to the process group (Ctrl-C), then SIGKILL if it lingers."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        except ProcessLookupError:
            pass
    # children that outlived the leader (a launched node) go too
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    log = getattr(proc, "_cass_log", None)
    if log is not None:
        log.close()
    return proc.returncode


def publish_once(command: str, cwd: Path, arrived: Any, wait_s: float = 20.0,
                 tries: int = 3) -> None:
    """Run a ``ros2 topic pub --once ...`` command, as typed, until
    ``arrived()`` says its effect is seen; AssertionError after ``tries``.

    ``--once`` publishes as soon as its publisher has matched one
    subscription and exits 0.1 s later (``--keep-alive``'s default). DDS
    matches the two sides separately: when the node's reader has not yet
    matched the new publisher, the one reliable sample is dropped and the
    publisher is gone before it could be repaired. Seen in loaded full-suite
    runs only; a user whose prompt had no effect publishes again, and so
    does this (the node's handling of every message it does get is tested
    over DDS in test/ros/test_node*.py)."""
    for _ in range(tries):
        proc = bash(command, cwd, timeout=90)
        assert proc.returncode == 0, f"{command}: exit {proc.returncode}\n{proc.stderr[-2000:]}"
        end = time.monotonic() + wait_s
        while time.monotonic() < end:
            if arrived():
                return
            time.sleep(0.2)
    raise AssertionError(f"{tries} x {command!r}: no effect within {wait_s:.0f} s each")


def have_ros2cli() -> str | None:
    """None when ``ros2`` (ros2cli, launch, launch_ros) is installed in the
    venv, else the reason for skipping."""
    import importlib.util

    def have(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is not None
        except (ImportError, ValueError):
            return False

    # PyPI's `launch` is an unrelated program: require the ROS one (launch.actions)
    if not ((VENV_BIN / "ros2").exists() and have("ros2launch") and have("launch_ros")
            and have("launch.actions")):
        return ("ROS's command-line tools (ros2cli, launch, launch_ros) are not installed: they "
                "have no PyPI wheels; `make` installs them from ../shared/ros2 when it exists "
                "(a ROS installation has them)")
    return None


def tiny_params_file(dest: Path, tiny_weights: tuple[str, str], **extra: Any) -> Path:
    """A copy of the shipped config/cass.yaml with the weights pointing at
    the tiny random checkpoints, short_side 64 and device cpu (plus
    ``extra``: name -> YAML text), everything else as shipped."""
    values = {"clip_weights": tiny_weights[0], "dino_weights": tiny_weights[1],
              "short_side": "64", "device": "cpu", **{k: str(v) for k, v in extra.items()}}
    text = CONFIG.read_text()
    for name, value in values.items():
        text, n = re.subn(rf"^(    {name}:).*$", rf"\g<1> {value}", text, count=1,
                          flags=re.MULTILINE)
        assert n == 1, f"config/cass.yaml has no parameter {name}"
    dest.write_text(text)
    return dest


def wait_until(predicate: Any, timeout: float, what: str, proc: subprocess.Popen | None = None,
               log: Path | None = None) -> Any:
    """Poll ``predicate`` until it returns something true; fail with the
    log's tail when ``proc`` exits or time runs out."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise AssertionError(f"the process exited ({proc.returncode}) while waiting for "
                                 f"{what}:\n{tail}")
        time.sleep(0.2)
    tail = log.read_text()[-3000:] if log else ""
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\n{tail}")


def which_in_setup(name: str) -> str:
    """Where the README's set-up puts ``name`` on PATH ('' when nowhere)."""
    proc = bash(f"command -v {name} || true", REPO)
    return proc.stdout.strip()


__all__ = ["REPO", "CONFIG", "user_env", "readme_blocks", "shell_commands", "strip_comment",
           "setup_line", "bash", "start_bash", "stop", "have_ros2cli", "tiny_params_file",
           "wait_until", "which_in_setup"]
