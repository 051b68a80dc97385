import os

import pytest
from kedro_project import TRAINING, make_project, run

os.environ.setdefault("KEDRO_DISABLE_TELEMETRY", "true")


@pytest.fixture()
def project(tmp_path, monkeypatch):
    """A fresh project folder (configuration only); the working directory is set to it."""
    monkeypatch.chdir(tmp_path)
    return make_project(tmp_path)


@pytest.fixture(scope="session")
def encoded_project(tmp_path_factory):
    """A project folder whose `data` pipeline has run once on small synthetic data."""
    root = tmp_path_factory.mktemp("encoded")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_project(root)
        run(root, "data", TRAINING)
    finally:
        os.chdir(cwd)
    return root


@pytest.fixture(scope="session")
def full_run_project(tmp_path_factory):
    """A project folder where the whole default chain has run once on the tiny data."""
    root = tmp_path_factory.mktemp("full_run")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        make_project(root)
        run(root)
    finally:
        os.chdir(cwd)
    return root
