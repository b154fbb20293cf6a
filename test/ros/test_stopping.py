"""cass_ros.ros.wiring.stopping on its own: the handler unwinds start-up with
StopRequested, only notes a signal once the node spins or cleans up, and
puts the previous handlers back (docs/ros-interface.md, Executables)."""

from __future__ import annotations

import os
import signal

import pytest

from cass_ros.ros.wiring.stopping import StopRequested, StopSignals

SIG = signal.SIGUSR1        # not the test runner's own SIGINT


def test_a_signal_during_start_up_raises_stop_requested() -> None:
    previous = signal.getsignal(SIG)
    signals = StopSignals([SIG])
    try:
        with pytest.raises(StopRequested, match="SIGUSR1"):
            os.kill(os.getpid(), SIG)
            signal.sigtimedwait([], 0)      # a bytecode boundary for the handler to run
        assert signals.received == SIG
        # a repeated signal raises again (a first one may be lost in a finaliser)
        with pytest.raises(StopRequested):
            os.kill(os.getpid(), SIG)
            signal.sigtimedwait([], 0)
    finally:
        signals.restore()
    assert signal.getsignal(SIG) == previous


def test_once_noted_only_a_signal_interrupts_nothing() -> None:
    signals = StopSignals([SIG])
    try:
        signals.note_only()
        os.kill(os.getpid(), SIG)
        signal.sigtimedwait([], 0)
        assert signals.received == SIG
    finally:
        signals.restore()


def test_ignored_disposition_is_replaced() -> None:
    # a background job of a script inherits SIGINT as SIG_IGN; a stop asked
    # for must still be one
    previous = signal.signal(SIG, signal.SIG_IGN)
    try:
        signals = StopSignals([SIG])
        assert signal.getsignal(SIG) not in (signal.SIG_IGN, signal.SIG_DFL)
        with pytest.raises(StopRequested):
            os.kill(os.getpid(), SIG)
            signal.sigtimedwait([], 0)
        signals.restore()
        assert signal.getsignal(SIG) == signal.SIG_IGN
    finally:
        signal.signal(SIG, previous)
