"""Downloads and extraction against a local HTTP server that misbehaves on purpose.

The server (tests/http_server.py) listens on 127.0.0.1 on a free port for one test at a time.
Back-off is zero (or recorded instead of slept), so every test takes a fraction of a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import socket
import stat
import zipfile
from pathlib import Path

import numpy as np
import pytest
from http_server import FileServer, RecordedRequest

from efficientcellseg import ctc, download
from efficientcellseg.cli import main
from efficientcellseg.download import (
    CorruptArchiveError,
    DownloadError,
    UnsafeArchiveError,
    download_dataset,
    download_file,
    extract_zip,
    fetch_imagenet_weights,
    partial_path,
)
from efficientcellseg.model import WeightsNotFoundError
from efficientcellseg.settings import ImagenetFile

FAST = {"retries": 3, "backoff": 0.0, "timeout": 10.0, "progress": False}
PAYLOAD = np.random.default_rng(0).bytes(300_000)
NAME = "Fluo-N2DH-SYN"


@pytest.fixture
def server(monkeypatch) -> FileServer:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")  # never route the tests via a proxy
    with FileServer() as file_server:
        yield file_server


def leftovers(folder: Path, *keep: str) -> list[str]:
    """Names in ``folder`` other than ``keep``: temporary files or folders left behind."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


# -- download_file --


def test_download_writes_the_exact_bytes(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD)
    dest = download_file(url, tmp_path / "sub" / "data.bin", expected_size=len(PAYLOAD), **FAST)
    assert dest == tmp_path / "sub" / "data.bin"
    assert dest.read_bytes() == PAYLOAD
    assert leftovers(dest.parent, "data.bin") == []
    (request,) = server.requests_to("/data.bin")
    assert "Range" not in request.headers
    assert request.headers["Accept-Encoding"] == "identity"


def resumed_from(request: RecordedRequest) -> int:
    """The byte a request asked to resume from (its ``Range: bytes=N-`` header)."""
    match = re.fullmatch(r"bytes=(\d+)-", request.headers.get("Range", ""))
    assert match, f"no open-ended Range header in {request.headers}"
    return int(match.group(1))


def test_dropped_connection_is_resumed_with_range_in_the_next_retry(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("/data.bin", PAYLOAD, cut_after=200_000)
    dest = download_file(url, tmp_path / "data.bin", **FAST)
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_to("/data.bin")
    assert "Range" not in first.headers
    # The bytes received before the drop are kept, up to the chunk that was being read.
    assert 200_000 - download.DOWNLOAD_CHUNK_BYTES < resumed_from(second) <= 200_000
    assert not partial_path(dest).exists()


def test_a_later_call_resumes_the_part_file(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, cut_after=200_000)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match=r"giving up after 1 attempts.*run again to resume"):
        download_file(url, dest, **{**FAST, "retries": 0})
    assert not dest.exists()
    kept = partial_path(dest).read_bytes()
    assert len(kept) > 100_000 and kept == PAYLOAD[: len(kept)]

    download_file(url, dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert resumed_from(server.requests_to("/data.bin")[1]) == len(kept)


def test_server_ignoring_range_restarts_from_zero(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, cut_after=200_000, honour_range=False)
    dest = download_file(url, tmp_path / "data.bin", **FAST)
    assert dest.read_bytes() == PAYLOAD  # the kept start is not appended to twice
    assert resumed_from(server.requests_to("/data.bin")[1]) > 0


def write_part(dest: Path, data: bytes, url: str, **version) -> None:
    """A partial download as an interrupted run leaves it: the bytes and their version."""
    partial_path(dest).write_bytes(data)
    record = {"url": url, "etag": None, "last_modified": None, "size": None, **version}
    download.version_path(partial_path(dest)).write_text(json.dumps(record))


def test_complete_part_file_is_finished_by_a_416_answer(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, etag='"v1"')
    dest = tmp_path / "data.bin"
    write_part(dest, PAYLOAD, url, etag='"v1"')  # killed between the last byte and the rename
    download_file(url, dest, expected_size=len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    (request,) = server.requests_to("/data.bin")
    assert request.headers["If-Range"] == '"v1"'
    assert leftovers(tmp_path, "data.bin") == []


def test_stale_part_longer_than_the_file_is_replaced(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD)
    dest = tmp_path / "data.bin"
    write_part(dest, bytes(len(PAYLOAD) + 10), url)  # a server without validators
    download_file(url, dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_to("/data.bin")
    assert resumed_from(first) == len(PAYLOAD) + 10 and "Range" not in second.headers


def test_part_without_a_version_record_is_not_resumed(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, etag='"v1"')
    dest = tmp_path / "data.bin"
    partial_path(dest).write_bytes(b"unknown origin")
    download_file(url, dest, **FAST)
    assert dest.read_bytes() == PAYLOAD
    (request,) = server.requests_to("/data.bin")
    assert "Range" not in request.headers


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_a_file_changed_on_the_server_is_not_spliced_onto_the_old_part(
    server: FileServer, tmp_path: Path, validator: str
) -> None:
    """The resume sends If-Range with the first answer's ETag (or Last-Modified date); the
    server answers a changed file with all of it, which replaces the old part."""
    versions = {
        "etag": ('"old"', '"new"'),
        "last_modified": ("Mon, 01 Jun 2026 10:00:00 GMT", "Tue, 02 Jun 2026 10:00:00 GMT"),
    }[validator]
    url = server.serve("/data.bin", PAYLOAD, cut_after=200_000, **{validator: versions[0]})
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError, match="run again to resume"):
        download_file(url, dest, **{**FAST, "retries": 0})
    assert 0 < partial_path(dest).stat().st_size < len(PAYLOAD)
    changed = PAYLOAD[::-1]  # same size, other bytes: only the validator tells them apart
    server.serve("/data.bin", changed, **{validator: versions[1]})
    download_file(url, dest, **FAST)
    assert dest.read_bytes() == changed
    resume = server.requests_to("/data.bin")[1]
    assert resume.headers["If-Range"] == versions[0] and resumed_from(resume) > 0
    assert leftovers(tmp_path, "data.bin") == []


def test_an_unchanged_file_is_resumed_under_if_range(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, cut_after=200_000, etag='"v1"')
    dest = download_file(url, tmp_path / "data.bin", **FAST)
    assert dest.read_bytes() == PAYLOAD
    first, second = server.requests_to("/data.bin")
    assert "If-Range" not in first.headers and second.headers["If-Range"] == '"v1"'
    assert resumed_from(second) > 100_000  # the bytes received were kept


def test_a_server_ignoring_if_range_is_caught_by_the_etag(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("/data.bin", PAYLOAD, cut_after=200_000, etag='"old"')
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download_file(url, dest, **{**FAST, "retries": 0})
    changed = PAYLOAD[::-1]
    server.serve("/data.bin", changed, etag='"new"', honour_if_range=False)
    download_file(url, dest, **FAST)  # 206 with another ETag: start over
    assert dest.read_bytes() == changed
    _, resumed, fresh = server.requests_to("/data.bin")
    assert resumed_from(resumed) > 0 and "Range" not in fresh.headers


def test_without_validators_a_changed_size_starts_over(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, cut_after=200_000)
    dest = tmp_path / "data.bin"
    with pytest.raises(DownloadError):
        download_file(url, dest, **{**FAST, "retries": 0})
    longer = PAYLOAD + b"more"
    server.serve("/data.bin", longer)
    download_file(url, dest, **FAST)
    assert dest.read_bytes() == longer


def test_404_fails_at_once_naming_the_url(server: FileServer, tmp_path: Path) -> None:
    url = f"{server.url}/missing.zip"
    with pytest.raises(DownloadError, match=r"/missing\.zip: HTTP 404") as caught:
        download_file(url, tmp_path / "missing.zip", **FAST)
    assert caught.value.status == 404 and caught.value.url == url
    assert len(server.requests_to("/missing.zip")) == 1  # no retries wasted
    assert leftovers(tmp_path) == []


def test_server_errors_are_retried_with_doubling_back_off(
    server: FileServer, tmp_path: Path, monkeypatch
) -> None:
    delays: list[float] = []
    monkeypatch.setattr(download.time, "sleep", delays.append)
    url = server.serve("/data.bin", PAYLOAD, fail_with=[500, 503, 502])
    dest = download_file(url, tmp_path / "data.bin", **{**FAST, "backoff": 0.5})
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests_to("/data.bin")) == 4
    assert delays == [0.5, 1.0, 2.0]


@pytest.mark.parametrize("status", [429, 503])
def test_retry_after_in_seconds_is_honoured(
    server: FileServer, tmp_path: Path, monkeypatch, status: int
) -> None:
    delays: list[float] = []
    monkeypatch.setattr(download.time, "sleep", delays.append)
    url = server.serve("/data.bin", PAYLOAD, fail_with=[status, 500], retry_after="7")
    download_file(url, tmp_path / "data.bin", **{**FAST, "backoff": 0.5})
    assert delays == [7.0, 7.0]  # longer than the back-off (0.5, 1.0): the server's wait
    assert (tmp_path / "data.bin").read_bytes() == PAYLOAD


def test_retry_after_as_a_date_is_honoured(server: FileServer, tmp_path: Path, monkeypatch):
    import email.utils
    import time

    delays: list[float] = []
    monkeypatch.setattr(download.time, "sleep", delays.append)
    when = email.utils.formatdate(time.time() + 120, usegmt=True)
    url = server.serve("/data.bin", PAYLOAD, fail_with=[503], retry_after=when)
    download_file(url, tmp_path / "data.bin", **FAST)
    assert len(delays) == 1 and 110 < delays[0] <= 120


def test_a_retry_after_beyond_an_hour_fails_with_advice(
    server: FileServer, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setattr(download.time, "sleep", pytest.fail)
    url = server.serve("/data.bin", PAYLOAD, fail_with=[503], retry_after="86400")
    with pytest.raises(DownloadError, match=r"asks to wait 86400 s .*run again later"):
        download_file(url, tmp_path / "data.bin", **FAST)
    assert leftovers(tmp_path) == []


def test_refused_connections_are_retried(tmp_path: Path, monkeypatch) -> None:
    delays: list[float] = []
    monkeypatch.setattr(download.time, "sleep", delays.append)
    with socket.socket() as probe:  # a free port with nobody listening once the probe closes
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/data.bin"
    with pytest.raises(DownloadError, match=r"giving up after 3 attempts"):
        download_file(url, tmp_path / "data.bin", **{**FAST, "retries": 2, "backoff": 0.25})
    assert delays == [0.25, 0.5]
    assert leftovers(tmp_path) == []


def test_retries_run_out(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, fail_with=[500] * 5)
    with pytest.raises(DownloadError, match=r"giving up after 3 attempts.*HTTP 500"):
        download_file(url, tmp_path / "data.bin", **{**FAST, "retries": 2})
    assert len(server.requests_to("/data.bin")) == 3
    assert leftovers(tmp_path) == []


def test_announced_size_differing_from_expected_fails_before_downloading(
    server: FileServer, tmp_path: Path
) -> None:
    url = server.serve("/data.bin", PAYLOAD)
    with pytest.raises(DownloadError, match=r"offers 300000 bytes but 300001 were expected"):
        download_file(url, tmp_path / "data.bin", expected_size=len(PAYLOAD) + 1, **FAST)
    assert len(server.requests_to("/data.bin")) == 1
    assert leftovers(tmp_path) == []


def test_received_size_differing_from_expected_fails(server: FileServer, tmp_path: Path) -> None:
    url = server.serve("/data.bin", PAYLOAD, send_length=False)
    with pytest.raises(DownloadError, match=r"received 300000 bytes but 299999 were expected"):
        download_file(url, tmp_path / "data.bin", expected_size=len(PAYLOAD) - 1, **FAST)
    assert leftovers(tmp_path) == []


def test_short_body_without_content_length_is_resumed(server: FileServer, tmp_path: Path) -> None:
    # Without Content-Length a short body ends cleanly: only the expected size reveals it.
    url = server.serve("/data.bin", PAYLOAD, send_length=False, cut_after=70_000)
    dest = download_file(url, tmp_path / "data.bin", expected_size=len(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert resumed_from(server.requests_to("/data.bin")[1]) == 70_000


def test_not_enough_disk_space_fails_early(server: FileServer, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(download.shutil, "disk_usage", lambda _: _Usage(free=1000))
    url = server.serve("/data.bin", PAYLOAD)
    with pytest.raises(RuntimeError, match=r"needs 0\.00 GB but .* has only"):
        download_file(url, tmp_path / "data.bin", **FAST)
    assert leftovers(tmp_path) == []


class _Usage:
    def __init__(self, free: int) -> None:
        self.free = free


# -- extract_zip --


def write_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            info = zipfile.ZipInfo(name)  # taken as written: no clean-up of hostile names
            info.compress_type = zipfile.ZIP_DEFLATED
            archive.writestr(info, data)
    return path


def test_extract_zip_writes_every_member(tmp_path: Path) -> None:
    members = {"top/a.txt": b"alpha", "top/sub/b.bin": PAYLOAD, "top/empty/": b""}
    archive = write_zip(tmp_path / "ok.zip", members)
    dest = extract_zip(archive, tmp_path / "out")
    assert (dest / "top/a.txt").read_bytes() == b"alpha"
    assert (dest / "top/sub/b.bin").read_bytes() == PAYLOAD
    assert (dest / "top/empty").is_dir()
    assert leftovers(tmp_path, "ok.zip", "out") == []


def test_extract_zip_refuses_an_existing_destination(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "ok.zip", {"a.txt": b"a"})
    (tmp_path / "out").mkdir()
    with pytest.raises(FileExistsError, match="already exists"):
        extract_zip(archive, tmp_path / "out")


def symlink_member(name: str) -> zipfile.ZipInfo:
    """A member that unpacks as a symbolic link (its data is the link target)."""
    info = zipfile.ZipInfo(name)
    info.create_system = 3  # Unix
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("/tmp/evil.txt", "absolute path"),
        ("C:/evil.txt", "absolute path"),
        ("../evil.txt", r"'\.\.' component"),
        ("data/../../evil.txt", r"'\.\.' component"),
        ("..\\evil.txt", r"'\.\.' component"),
    ],
)
def test_members_outside_the_destination_are_refused(tmp_path: Path, name: str, reason) -> None:
    work = tmp_path / "work"
    work.mkdir()
    archive = write_zip(work / "evil.zip", {"good.txt": b"fine", name: b"evil"})
    with pytest.raises(UnsafeArchiveError, match=reason):
        extract_zip(archive, work / "out")
    assert leftovers(work, "evil.zip") == []
    assert not (tmp_path / "evil.txt").exists()


def test_symlink_members_are_refused(tmp_path: Path) -> None:
    archive = tmp_path / "link.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("good.txt", b"fine")
        zf.writestr(symlink_member("passwd"), "/etc/passwd")
    with pytest.raises(UnsafeArchiveError, match="'passwd' is a symbolic link"):
        extract_zip(archive, tmp_path / "out")
    assert leftovers(tmp_path, "link.zip") == []


def test_archives_declaring_too_many_bytes_are_refused(tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "bomb.zip", {"a.bin": bytes(600), "b.bin": bytes(600)})
    assert archive.stat().st_size < 1000  # zeros compress: the declared size is what counts
    with pytest.raises(UnsafeArchiveError, match=r"1,200 bytes, more than the limit of 1,000"):
        extract_zip(archive, tmp_path / "out", max_bytes=1000)
    assert leftovers(tmp_path, "bomb.zip") == []
    extract_zip(archive, tmp_path / "out", max_bytes=1200)  # at the limit it is fine


def test_bytes_written_are_counted_when_declared_sizes_lie(tmp_path: Path, monkeypatch) -> None:
    # Python's zipfile itself stops at a member's declared size, so a lying archive cannot be
    # built that it would unpack: make the declared-size check blind instead, to show that the
    # running count of written bytes stops the extraction on its own.
    monkeypatch.setattr(download, "_check_declared_size", lambda *args: None)
    archive = write_zip(tmp_path / "bomb.zip", {"a.bin": bytes(600), "b.bin": bytes(600)})
    with pytest.raises(UnsafeArchiveError, match="'b.bin' unpacks past the limit of 1,000"):
        extract_zip(archive, tmp_path / "out", max_bytes=1000)
    assert leftovers(tmp_path, "bomb.zip") == []


def test_a_file_that_is_not_a_zip_is_reported_as_corrupt(tmp_path: Path) -> None:
    archive = tmp_path / "data.zip"
    archive.write_bytes(PAYLOAD[:5000])
    with pytest.raises(CorruptArchiveError, match=r"data\.zip: not a valid zip archive"):
        extract_zip(archive, tmp_path / "out")
    assert leftovers(tmp_path, "data.zip") == []


def test_a_damaged_member_leaves_no_partial_extraction(tmp_path: Path) -> None:
    archive = tmp_path / "damaged.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("first.bin", PAYLOAD[:1000])  # extracted before the damage is found
        zf.writestr("second.bin", b"A" * 5000)
    data = bytearray(archive.read_bytes())
    offset = data.index(b"A" * 5000) + 2500
    data[offset] ^= 0xFF
    archive.write_bytes(bytes(data))
    with pytest.raises(CorruptArchiveError, match=r"'second\.bin' is damaged .*CRC"):
        extract_zip(archive, tmp_path / "out")
    assert leftovers(tmp_path, "damaged.zip") == []


# -- download_dataset --


def zip_dataset(
    source: Path, archive: Path, *, top: str | None, only: tuple[str, ...] = ()
) -> Path:
    """Zip a CTC dataset folder as the CTC does (under ``top/``) or flat (``top=None``)."""
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(source.rglob("*")):
            relative = path.relative_to(source)
            if only and relative.parts[0] not in only:
                continue
            zf.write(path, f"{top}/{relative.as_posix()}" if top else relative.as_posix())
    return archive


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture(scope="module")
def training_zip(synthetic_dataset_2d: Path, tmp_path_factory) -> bytes:
    folder = tmp_path_factory.mktemp("zips")
    return zip_dataset(synthetic_dataset_2d, folder / "train.zip", top=NAME).read_bytes()


@pytest.fixture(scope="module")
def flat_test_zip(synthetic_dataset_2d: Path, tmp_path_factory) -> bytes:
    """A test set: raw sequences only, no annotations, and no top-level folder."""
    folder = tmp_path_factory.mktemp("zips")
    archive = zip_dataset(synthetic_dataset_2d, folder / "test.zip", top=None, only=("01", "02"))
    return archive.read_bytes()


def test_training_set_is_downloaded_extracted_and_verified(
    server: FileServer, tmp_path: Path, training_zip: bytes, synthetic_dataset_2d: Path
) -> None:
    server.serve(f"/training-datasets/{NAME}.zip", training_zip)
    dest_root = tmp_path / "resources"
    path = download_dataset(
        NAME, dest_root, base_url=server.url, expected_size=len(training_zip), **FAST
    )
    assert path == dest_root / NAME
    assert ctc.discover_sequences(path) == ["01", "02"]
    assert files_of(path) == files_of(synthetic_dataset_2d)
    assert len(ctc.open_sequence(path, "01").gt_seg) > 0
    assert leftovers(dest_root) == [NAME]  # zip deleted, no staging folder left

    again = download_dataset(NAME, dest_root, base_url=server.url, **FAST)
    assert again == path
    assert len(server.requests) == 1  # already complete: nothing downloaded again


def test_test_set_falls_back_to_the_older_url(
    server: FileServer, tmp_path: Path, flat_test_zip: bytes, synthetic_dataset_2d: Path
) -> None:
    server.serve(f"/challenge-datasets/{NAME}.zip", flat_test_zip)
    path = download_dataset(
        NAME, tmp_path, kind="test", base_url=server.url + "/", keep_zip=True, **FAST
    )
    assert [r.path for r in server.requests] == [
        f"/test-datasets/{NAME}.zip",
        f"/challenge-datasets/{NAME}.zip",
    ]
    assert ctc.discover_sequences(path) == ["01", "02"]
    assert sorted(p.name for p in path.iterdir()) == ["01", "02"]
    assert (path / "02" / "t003.tif").read_bytes() == (
        synthetic_dataset_2d / "02" / "t003.tif"
    ).read_bytes()
    assert (tmp_path / f"{NAME}.zip").read_bytes() == flat_test_zip  # kept on request
    assert leftovers(tmp_path, NAME, f"{NAME}.zip") == []


def test_kept_zip_is_reused(server: FileServer, tmp_path: Path, training_zip: bytes) -> None:
    (tmp_path / f"{NAME}.zip").write_bytes(training_zip)
    path = download_dataset(NAME, tmp_path, base_url=server.url, **FAST)
    assert ctc.discover_sequences(path) == ["01", "02"]
    assert server.requests == []


def test_missing_dataset_names_every_url_tried(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadError, match=r"test-datasets/.* nor .*challenge-datasets/"):
        download_dataset(NAME, tmp_path, kind="test", base_url=server.url, **FAST)
    assert len(server.requests) == 2
    assert leftovers(tmp_path) == []


def test_zip_without_ctc_layout_leaves_no_dataset(server: FileServer, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "other.zip", {f"{NAME}/readme.txt": b"no frames here"})
    server.serve(f"/training-datasets/{NAME}.zip", archive.read_bytes())
    dest_root = tmp_path / "resources"
    with pytest.raises(ctc.CTCFormatError, match=r"does not hold a CTC dataset.*moved to"):
        download_dataset(NAME, dest_root, base_url=server.url, **FAST)
    assert leftovers(dest_root) == [f"{NAME}.zip.refused"]  # for inspection, nothing else
    # the next run does not refuse the same zip again: it downloads it afresh
    with pytest.raises(ctc.CTCFormatError, match=r"does not hold a CTC dataset"):
        download_dataset(NAME, dest_root, base_url=server.url, **FAST)
    assert len(server.requests) == 2


def test_an_unsafe_dataset_zip_is_set_aside(server: FileServer, tmp_path: Path) -> None:
    archive = write_zip(tmp_path / "evil.zip", {f"{NAME}/01/t000.tif": b"x", "../evil": b"x"})
    server.serve(f"/training-datasets/{NAME}.zip", archive.read_bytes())
    dest_root = tmp_path / "resources"
    with pytest.raises(UnsafeArchiveError, match=r"'\.\.' component.*moved to .*\.refused"):
        download_dataset(NAME, dest_root, base_url=server.url, **FAST)
    assert leftovers(dest_root) == [f"{NAME}.zip.refused"]


@pytest.mark.parametrize(
    "members",
    [
        {"X/01": b"file", "X/01/t000.tif": b"frame"},  # a file, then a folder of that name
        {"X/01/": b"", "X/01": b"file"},  # a folder, then a file of that name
        {"X/01/t000.tif": b"a", "X\\01\\t000.tif": b"b"},  # the same file twice
    ],
)
def test_members_colliding_with_each_other_are_refused(tmp_path: Path, members) -> None:
    archive = write_zip(tmp_path / "clash.zip", members)
    with pytest.raises(UnsafeArchiveError, match=r"both a file and a folder|appears twice"):
        extract_zip(archive, tmp_path / "out")
    assert leftovers(tmp_path, "clash.zip") == []


def test_a_flat_zip_gives_a_dataset_folder_of_the_umasks_mode(
    server: FileServer, tmp_path: Path, flat_test_zip: bytes
) -> None:
    server.serve(f"/test-datasets/{NAME}.zip", flat_test_zip)
    old = os.umask(0o027)
    try:
        path = download_dataset(NAME, tmp_path, kind="test", base_url=server.url, **FAST)
    finally:
        os.umask(old)
    folders = [path, *(p for p in path.rglob("*") if p.is_dir())]
    files = [p for p in path.rglob("*") if p.is_file()]
    assert {stat.S_IMODE(p.stat().st_mode) for p in folders} == {0o750}
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {0o640}


def test_corrupt_dataset_zip_is_deleted(server: FileServer, tmp_path: Path) -> None:
    server.serve(f"/training-datasets/{NAME}.zip", PAYLOAD)
    with pytest.raises(CorruptArchiveError, match=r"damaged and has been deleted: run again"):
        download_dataset(NAME, tmp_path, base_url=server.url, **FAST)
    assert leftovers(tmp_path) == []


def test_a_non_dataset_folder_in_the_way_is_not_touched(server: FileServer, tmp_path: Path) -> None:
    (tmp_path / NAME).mkdir()
    (tmp_path / NAME / "notes.txt").write_text("mine")
    with pytest.raises(ctc.CTCFormatError, match="exists but is not a CTC dataset"):
        download_dataset(NAME, tmp_path, base_url=server.url, **FAST)
    assert (tmp_path / NAME / "notes.txt").read_text() == "mine"
    assert server.requests == []


@pytest.mark.parametrize("name", ["../etc", "a/b", "", "Fluo N2DH"])
def test_dataset_names_that_are_not_names_are_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError, match="is not a CTC dataset name"):
        download_dataset(name, tmp_path, base_url="http://127.0.0.1:9", **FAST)


# -- command line --


def test_cli_download_prints_where_the_dataset_is(
    server: FileServer, tmp_path: Path, training_zip: bytes, flat_test_zip: bytes, capsys
) -> None:
    server.serve(f"/training-datasets/{NAME}.zip", training_zip)
    server.serve(f"/test-datasets/{NAME}.zip", flat_test_zip)
    assert main(["download", NAME, str(tmp_path / "train"), "--base-url", server.url]) == 0
    assert str(tmp_path / "train" / NAME) in capsys.readouterr().out
    assert main(["download", NAME, str(tmp_path / "test"), "--test", "--base-url", server.url]) == 0
    assert str(tmp_path / "test" / NAME) in capsys.readouterr().out
    assert ctc.discover_sequences(tmp_path / "test" / NAME) == ["01", "02"]


def test_cli_download_reports_a_missing_dataset(server: FileServer, tmp_path: Path, caplog) -> None:
    assert main(["download", "Fluo-N2DH-NONE", str(tmp_path), "--base-url", server.url]) == 1
    assert "training-datasets/Fluo-N2DH-NONE.zip" in caplog.text
    assert main(["download", "../etc", str(tmp_path), "--base-url", server.url]) == 2
    assert "is not a CTC dataset name" in caplog.text
    (tmp_path / "file").write_text("a file")
    assert main(["download", NAME, str(tmp_path / "file"), "--base-url", server.url]) == 2
    assert f"{tmp_path / 'file'} is a file, not a folder" in caplog.text


# -- ImageNet weights: pinned checksum --


def _pinned(server: FileServer, body: bytes, checksum: str | None = None) -> ImagenetFile:
    url = server.serve("/w/efficientnetb0_notop.h5", body, cut_after=100_000)
    digest = checksum or f"sha256:{hashlib.sha256(body).hexdigest()}"
    return ImagenetFile("EfficientNetB0", url, digest, len(body))


def test_imagenet_weights_are_resumed_and_checked(server: FileServer, tmp_path: Path) -> None:
    pinned = _pinned(server, PAYLOAD)
    dest = fetch_imagenet_weights(pinned, tmp_path / "efficientnetb0_notop.h5", **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert len(server.requests_to("/w/efficientnetb0_notop.h5")) == 2  # cut once, resumed
    # There already with the pinned checksum: nothing is fetched again.
    fetch_imagenet_weights(pinned, dest, **FAST)
    assert len(server.requests_to("/w/efficientnetb0_notop.h5")) == 2
    md5 = ImagenetFile("EfficientNetB0", pinned.url, f"md5:{hashlib.md5(PAYLOAD).hexdigest()}")
    assert fetch_imagenet_weights(md5, dest, **FAST) == dest  # Keras' own pins are MD5


def test_imagenet_weights_with_another_checksum_are_not_kept(
    server: FileServer, tmp_path: Path
) -> None:
    pinned = _pinned(server, PAYLOAD, checksum="sha256:" + "0" * 64)
    dest = tmp_path / "efficientnetb0_notop.h5"
    with pytest.raises(WeightsNotFoundError) as info:
        fetch_imagenet_weights(pinned, dest, **FAST)
    message = str(info.value)
    assert "sha256 is " + hashlib.sha256(PAYLOAD).hexdigest() in message
    assert "encoder_weights: null" in message and pinned.url in message
    assert leftovers(tmp_path) == []


def test_unreachable_imagenet_weights_say_what_to_do(server: FileServer, tmp_path: Path) -> None:
    missing = ImagenetFile("EfficientNetB5", f"{server.url}/w/efficientnetb5_notop.h5", "md5:0")
    with pytest.raises(WeightsNotFoundError) as info:
        fetch_imagenet_weights(missing, tmp_path / "efficientnetb5_notop.h5", **FAST)
    message = str(info.value)
    assert "HTTP 404" in message
    assert f"download {missing.url} (md5:0) to {tmp_path / 'efficientnetb5_notop.h5'}" in message
    assert "snakemake resources/imagenet/efficientnetb5_notop.h5" in message
    assert "`encoder_weights: null`" in message
