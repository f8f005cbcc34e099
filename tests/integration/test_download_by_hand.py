"""Offline: a failed download says how to place a dataset one already has, and that way works."""

from __future__ import annotations

from pathlib import Path

import pytest
from workflow_runs import served_dataset_zip

from efficientcellseg.download import DownloadError, download_dataset

NAME = "Fluo-N2DL-Example"
UNREACHABLE = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection fails


def test_failed_download_names_where_to_put_a_copy(tmp_path: Path) -> None:
    with pytest.raises(DownloadError) as failure:
        download_dataset(NAME, tmp_path, base_url=UNREACHABLE, retries=0, expected_size=1234)
    message = str(failure.value)
    assert f"put the zip at {tmp_path / NAME}.zip" in message
    assert "when it has 1,234 bytes" in message
    assert f"so that {tmp_path / NAME}/01/t000.tif exists" in message
    assert "`source: local`" in message and "`ctc_server`" in message


def test_a_zip_put_there_by_hand_is_unpacked_without_network(tmp_path: Path) -> None:
    data = served_dataset_zip(NAME)
    (tmp_path / f"{NAME}.zip").write_bytes(data)
    dataset = download_dataset(NAME, tmp_path, base_url=UNREACHABLE, expected_size=len(data))
    assert (dataset / "01" / "t000.tif").is_file()
    assert not (tmp_path / f"{NAME}.zip").exists()  # removed after extraction, as downloaded ones
