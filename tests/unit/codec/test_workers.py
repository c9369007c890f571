"""Codec worker processes: results, errors, hung and dying tasks, memory limit."""
from __future__ import annotations

import os
import time

import pytest

from engine.codec.workers import CodecWorkers
from engine.errors import TranscodeError


def _pid_and_square(x: int) -> tuple[int, int]:
    return os.getpid(), x * x


def _fail(message: str) -> None:
    raise ValueError(message)


def _hang(seconds: float) -> None:
    time.sleep(seconds)


def _die() -> None:
    os._exit(3)


def _allocate(n: int) -> int:
    return len(bytearray(n))


@pytest.fixture
def workers():
    pool = CodecWorkers(processes=1, timeout=5.0, memory_limit=1 << 30)
    yield pool
    pool.close()


def test_result_comes_from_another_process_and_the_worker_is_reused(workers):
    pid, value = workers.run(_pid_and_square, 7)
    assert value == 49 and pid != os.getpid()
    assert workers.run(_pid_and_square, 3) == (pid, 9)


def test_error_is_reported_and_the_worker_lives_on(workers):
    pid, _ = workers.run(_pid_and_square, 1)
    with pytest.raises(TranscodeError, match="ValueError: broken stream"):
        workers.run(_fail, "broken stream")
    assert workers.run(_pid_and_square, 2)[0] == pid


def test_hung_task_is_killed_and_the_worker_replaced():
    pool = CodecWorkers(processes=1, timeout=0.5)
    try:
        pid, _ = pool.run(_pid_and_square, 1)
        started = time.monotonic()
        with pytest.raises(TranscodeError, match="exceeded"):
            pool.run(_hang, 60)
        assert time.monotonic() - started < 10
        new_pid, value = pool.run(_pid_and_square, 4)
        assert value == 16 and new_pid != pid
    finally:
        pool.close()


def test_dying_worker_is_replaced(workers):
    with pytest.raises(TranscodeError, match="died"):
        workers.run(_die)
    assert workers.run(_pid_and_square, 5)[1] == 25


def test_memory_limit(workers):
    with pytest.raises(TranscodeError, match="memory"):
        workers.run(_allocate, 2 << 30)
    assert workers.run(_allocate, 1 << 20) == 1 << 20
