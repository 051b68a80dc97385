"""``process_folder`` reuses an encoding only when it was made from the same raw files and
encoding settings, and encodes anew otherwise."""

from __future__ import annotations

import os

import pandas as pd
import pytest
from raw_files import write_many_raw

from rec_pipeline.config import DataConfig, VocabConfig
from rec_pipeline.data.processing import process_folder
from rec_pipeline.data.raw import RawFiles


@pytest.fixture()
def raw(tmp_path):
    folder = tmp_path / "raw"
    write_many_raw(folder)
    return RawFiles(folder).check()


def _encoded(processed) -> bool:
    """Whether this call encoded (a reuse times only the sampling)."""
    return "parse" in processed.seconds


def _vocab(processed) -> pd.DataFrame:
    return pd.read_parquet(processed.folder / "vocabularies.parquet")


def test_same_settings_reuse_and_other_settings_encode_again(tmp_path, raw):
    folder = tmp_path / "processed"
    data = DataConfig(source="files", workers=1, chunk_mb=1)
    first = process_folder(raw, data, VocabConfig(min_count=1), folder)
    assert _encoded(first)
    vocab = _vocab(first)
    # The worker count and the sampling keys leave the encoding as it is.
    same = data.model_copy(update={"workers": 2, "neg_keep_prob_train": 0.5})
    again = process_folder(raw, same, VocabConfig(min_count=1), folder)
    assert not _encoded(again) and _vocab(again).equals(vocab)
    # A vocabulary key makes another vocabulary: encoded again, not the old one reused.
    fewer = process_folder(raw, data, VocabConfig(min_count=100), folder)
    assert _encoded(fewer) and 0 < len(_vocab(fewer)) < len(vocab)
    # So does another validation share.
    share = data.model_copy(update={"valid_fraction": 0.3})
    assert _encoded(process_folder(raw, share, VocabConfig(min_count=100), folder))
    assert not _encoded(process_folder(raw, share, VocabConfig(min_count=100), folder))


def test_a_changed_raw_file_is_encoded_again(tmp_path, raw):
    folder = tmp_path / "processed"
    data = DataConfig(source="files", workers=1, chunk_mb=1)
    assert _encoded(process_folder(raw, data, VocabConfig(min_count=1), folder))
    path = raw.skeleton("train")
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert _encoded(process_folder(raw, data, VocabConfig(min_count=1), folder))


def test_an_encoding_without_its_settings_is_not_trusted(tmp_path, raw):
    """A folder encoded before the settings were written down is encoded again."""
    folder = tmp_path / "processed"
    data = DataConfig(source="files", workers=1, chunk_mb=1)
    process_folder(raw, data, VocabConfig(min_count=1), folder)
    (folder / "encode_settings.json").unlink()
    assert _encoded(process_folder(raw, data, VocabConfig(min_count=1), folder))
