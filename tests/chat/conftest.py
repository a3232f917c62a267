from __future__ import annotations

import pytest
from chat_fixtures import make_fixture


@pytest.fixture(scope="session")
def chat_fixture(tmp_path_factory):
    return make_fixture(tmp_path_factory.mktemp("chat"))
