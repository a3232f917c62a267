"""A Hugging Face Hub-compatible server on loopback for tests and benchmarks (see :mod:`.server`)."""

from .server import (
    DEFAULT_TOKEN,
    DEFAULT_USERS,
    READER_TOKEN,
    HubServer,
    start_hub_server,
)

__all__ = ["DEFAULT_TOKEN", "DEFAULT_USERS", "READER_TOKEN", "HubServer", "start_hub_server"]
