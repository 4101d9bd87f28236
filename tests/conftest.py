"""Shared fixtures: a small synthetic data set and the same set prepared into a data directory.

Both are session-scoped and read-only for tests: copy them (shutil.copytree) before changing anything.
"""
from __future__ import annotations

from pathlib import Path

import pytest

SYNTH_N = 48  # 24 real + 24 fake: every split gets each class at 0.8/0.1/0.1
SYNTH_SIZE = 64


@pytest.fixture(scope="session")
def synth_src(tmp_path_factory) -> Path:
    """A synthetic set in the public archive's layout: returns .../real_and_fake_face
    (training_real/ with 24 real_NNNNN.jpg, training_fake/ with 24 {easy,mid,hard}_NNN_CCCC.jpg)."""
    from realfake.pipelines.synth import synth

    return synth(tmp_path_factory.mktemp("synth"), n=SYNTH_N, size=SYNTH_SIZE, seed=0)


@pytest.fixture(scope="session")
def prepared(synth_src, tmp_path_factory) -> Path:
    """`synth_src` prepared with the default split and seed 0: returns the data dir (manifest.csv,
    prepare.json, rejected.csv); train/valid/test hold 20/2/2 images of each class."""
    from realfake.pipelines.prepare import prepare

    data_dir = tmp_path_factory.mktemp("prepared")
    prepare(synth_src, data_dir, seed=0, progress=False)
    return data_dir
