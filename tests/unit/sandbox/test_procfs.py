"""procfs reads this very process as the kernel and Python's os module see it."""

from __future__ import annotations

import os
import subprocess
import sys

from sandbox import procfs


def test_a_process_reads_as_os_sees_it() -> None:
    me = procfs.stats()[os.getpid()]
    assert (me.parent, me.group) == (os.getppid(), os.getpgrp())
    assert me.rss_bytes > 10 * 2**20  # a Python with pytest loaded
    assert me.cpu_seconds > 0
    assert "pytest" in procfs.commands()[os.getpid()]


def test_descendants_follow_children_and_leave_others_out() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        table = procfs.stats()
        under = procfs.descendants([os.getpid()], table)
        assert {os.getpid(), child.pid} <= under
        assert os.getppid() not in under
        assert procfs.descendants([child.pid], table) == {child.pid}
    finally:
        child.kill()
        child.wait()
