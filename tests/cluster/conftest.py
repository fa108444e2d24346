"""A real Ray cluster on this machine for the scale-out tests, started once and stopped by its handle.

`make test` runs these tests through tests/loopback.sh, in a network namespace with only the
loopback interface: Ray opens its ports on every interface it sees.
"""

from __future__ import annotations

import socket
import warnings
from collections.abc import Iterator

import pytest


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[None]:
    import ray

    others = {name for _, name in socket.if_nameindex()} - {"lo"}
    if others:
        warnings.warn(
            f"the Ray cluster's ports are open on {sorted(others)} too (run via tests/loopback.sh)",
            stacklevel=1,
        )
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()
