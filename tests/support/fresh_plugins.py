"""For test modules that run the CLI, which caches the loaded plugins (``get_plugins``): imported
into a module, each of its tests starts and ends with a fresh load, so a plugin a test registers
or an environment variable it sets (``ZSQBENCH_PLUGINS``) never leaks into the next."""

from __future__ import annotations

import pytest

from zsqbench.api.plugins import get_plugins


@pytest.fixture(autouse=True)
def fresh_plugins():
    get_plugins.cache_clear()
    yield
    get_plugins.cache_clear()
