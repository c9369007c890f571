from __future__ import annotations

import pytest
from hypothesis import settings

from tests.support import ServerThread, make_config

# Property tests check behaviour, never speed (benchmarks/ measures speed): no
# per-example deadline, which would fail at random on a loaded 2-core CI machine.
settings.register_profile("pacs", deadline=None)
settings.load_profile("pacs")


@pytest.fixture
def server(tmp_path):
    """A running archive server on 127.0.0.1 (random port) with its data in tmp_path."""
    running = ServerThread(make_config(tmp_path / "data")).start()
    yield running
    running.stop()


@pytest.fixture
def server_factory(tmp_path):
    """Start servers with custom network/storage settings; all stopped at teardown."""
    started = []

    def start(**network):
        running = ServerThread(make_config(tmp_path / f"data{len(started)}", **network)).start()
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()
