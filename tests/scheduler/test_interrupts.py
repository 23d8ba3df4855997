"""More Ctrl-Cs while the engine stops its runs are held off, then the handler is back."""

from __future__ import annotations

import os
import signal
import time

import pytest

from rapidfire_core.scheduler.interrupts import sigint_deferred


def test_sigint_inside_the_block_does_not_raise_and_the_handler_is_restored(capsys):
    with sigint_deferred():
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # the handler runs between bytecodes: give it a moment
    assert "still stopping the runs in flight" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)
