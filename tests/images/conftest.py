"""Session fixtures of the image tests: a Docker engine and the images, built once.

The engine is DOCKER_HOST's when set, else the private dockerd of docker/images.py (started here
when none answers, and then always stopped at the end). A missing engine fails the tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

import images
from k8s.k8s_support import Rendering, render


@pytest.fixture(scope="session")
def engine() -> Iterator[images.Engine]:
    engine = images.Engine()
    try:
        engine.start(tied=True)  # stopped even if pytest is killed
        yield engine
    finally:
        if engine.started:
            engine.stop()


@pytest.fixture(scope="session")
def image(engine: images.Engine) -> Callable[[str], str]:
    """Builds one image on first use; a failed build fails only that image's tests."""
    built: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in built:
            built.update(images.build(engine, [name]))
        return built[name]

    return get


@pytest.fixture(scope="session")
def chart() -> Rendering:
    """The chart with its default values: what a user's `skaffold dev` deploys."""
    return render("default")
