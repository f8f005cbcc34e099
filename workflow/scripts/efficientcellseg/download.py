"""Download Cell Tracking Challenge datasets robustly and unpack them safely.

Three layers, each usable on its own:

- :func:`download_file` streams one URL into ``<dest>.part``, resumes that file with an HTTP
  Range request after an interruption (in the next retry or in a later call), retries transient
  failures with exponential back-off (or after the wait a server asks for with Retry-After),
  checks the size, and renames the file into place only when it is complete. A resume is
  guarded by the file's version (its ETag or Last-Modified date, kept in ``<dest>.part.json``,
  sent as If-Range): a file that changed on the server is downloaded afresh, never spliced
  onto the start of the old one.
- :func:`extract_zip` unpacks a zip only if every member is a plain file or folder that stays
  inside the destination and the total stays under a byte limit. It works in a temporary folder
  beside the destination, so a failed extraction leaves nothing behind.
- :func:`download_dataset` puts a CTC training or test set at ``<dest_root>/<NAME>/01 ...``.
- :func:`download_verified` downloads one file that must have a pinned checksum (the ImageNet
  weights of the encoders), so a damaged or swapped file is never used.

The zip is deleted after a successful extraction unless ``keep_zip=True``: the largest CTC zip
(Fluo-N3DL-TRIC, 20.6 GB) would otherwise double the disk space a dataset needs. An unfinished
download stays as ``<NAME>.zip.part`` and the next call resumes it. A zip that is refused
(unsafe, or no CTC dataset inside) is renamed to ``<NAME>.zip.refused`` for inspection, so the
next run downloads it again rather than refusing the same file for ever.
"""

from __future__ import annotations

import email.utils
import json
import logging
import os
import re
import shutil
import stat
import time
import zipfile
import zlib
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath

import requests
from tqdm import tqdm

from . import ctc
from .files import ChecksumError, atomic_output, atomic_write_text, check_checksum
from .settings import ImagenetFile, WorkflowSettings

log = logging.getLogger(__name__)

TRAINING_FOLDERS = ("training-datasets",)
TEST_FOLDERS = ("test-datasets", "challenge-datasets")  # current form first, then the older one
# When a connection drops, urllib3 discards the partly filled chunk it was reading, so download
# chunks are small (at most 64 KiB to fetch again); extraction copies in larger chunks.
DOWNLOAD_CHUNK_BYTES = 1 << 16
EXTRACT_CHUNK_BYTES = 1 << 20
# Limit on what one archive may unpack to: far above any CTC dataset, far below a zip bomb.
DEFAULT_MAX_BYTES = 256 * 2**30
MAX_BACKOFF_SECONDS = 300.0
# A server asking (Retry-After) for a longer wait than this gets a clear error instead.
MAX_RETRY_AFTER_SECONDS = 3600.0
RETRYABLE_STATUSES = frozenset({408, 425, 429})  # plus every 5xx
CONTENT_RANGE = re.compile(r"^bytes\s+(?:(\d+)-(\d+)|\*)/(\d+|\*)$")
DATASET_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


class DownloadError(RuntimeError):
    """A download failed for good; the message names the URL and says what to do."""

    def __init__(self, message: str, *, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class ArchiveError(ValueError):
    """A zip archive cannot be extracted; nothing was extracted."""


class CorruptArchiveError(ArchiveError):
    """The archive is damaged (bad structure, bad CRC): download it again."""


class UnsafeArchiveError(ArchiveError):
    """The archive holds members that could write outside the destination, links, or too much."""


class _TransientError(Exception):
    """A failure worth another attempt: a dropped connection, a 5xx answer, a short body.

    ``retry_after``: seconds the server asked to wait (its Retry-After header), if it did.
    """

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.retry_after = retry_after


TRANSIENT_ERRORS = (
    _TransientError,
    requests.exceptions.ConnectionError,
    requests.exceptions.Timeout,
    requests.exceptions.ChunkedEncodingError,
)


# -- download of one file --


def partial_path(dest: str | os.PathLike) -> Path:
    """Where :func:`download_file` keeps the unfinished download of ``dest``."""
    dest = Path(dest)
    return dest.with_name(dest.name + ".part")


def version_path(part: Path) -> Path:
    """Where the version (URL, ETag, Last-Modified, size) of a partial download is kept."""
    return part.with_name(part.name + ".json")


def _discard(part: Path) -> None:
    """Forget a partial download: the bytes and the record of their version."""
    part.unlink(missing_ok=True)
    version_path(part).unlink(missing_ok=True)


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    expected_size: int | None = None,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Download ``url`` to ``dest``, resuming and retrying, and return ``dest``.

    Parameters
    ----------
    expected_size
        Size in bytes the file must have; checked against the size the server announces (before
        anything is downloaded) and against the bytes received.
    retries
        Further attempts after the first one on dropped connections, timeouts, 5xx answers and
        short bodies. Each attempt resumes from the ``.part`` file. Other 4xx answers (404) are
        final at once. A short body is noticed from the Content-Length or Content-Range the
        server sends, else from ``expected_size``; with neither it cannot be told apart.
    backoff
        Seconds before the first retry; the wait doubles on every retry (capped at 5 minutes).
    timeout
        Seconds to wait for the connection and for each read.
    progress
        Show a progress bar on a terminal (never when stderr is not a TTY).
    session
        A :class:`requests.Session` to reuse (for proxies, authentication, connection pooling).
    """
    if retries < 0:
        raise ValueError(f"retries must be 0 or more, not {retries}")
    dest = Path(dest)
    part = partial_path(dest)
    own_session = session is None
    session = session or requests.Session()
    log.info("downloading %s to %s", url, dest)
    try:
        _download_with_retries(
            session,
            url,
            part,
            expected_size=expected_size,
            retries=retries,
            backoff=backoff,
            timeout=timeout,
            progress=progress,
        )
    finally:
        if own_session:
            session.close()
    os.replace(part, dest)
    version_path(part).unlink(missing_ok=True)
    log.info("downloaded %s (%d bytes)", dest, dest.stat().st_size)
    return dest


def _download_with_retries(
    session: requests.Session,
    url: str,
    part: Path,
    *,
    expected_size: int | None,
    retries: int,
    backoff: float,
    timeout: float,
    progress: bool,
) -> None:
    for attempt in range(retries + 1):
        try:
            _download_once(session, url, part, expected_size, timeout, progress)
            return
        except TRANSIENT_ERRORS as exc:
            if attempt == retries:
                kept = f"; the partial file {part} is kept: run again to resume"
                raise DownloadError(
                    f"{url}: giving up after {retries + 1} attempts, last error: {_reason(exc)}"
                    + (kept if part.exists() else ""),
                    url=url,
                ) from exc
            asked = getattr(exc, "retry_after", None)  # the server's Retry-After
            if asked is not None and asked > MAX_RETRY_AFTER_SECONDS:
                raise DownloadError(
                    f"{url}: {_reason(exc)}; the server asks to wait {asked:.0f} s before trying "
                    "again (Retry-After): run again later",
                    url=url,
                ) from exc
            delay = max(min(backoff * 2**attempt, MAX_BACKOFF_SECONDS), asked or 0.0)
            log.warning(
                "%s: %s; retry %d of %d in %.3g s", url, _reason(exc), attempt + 1, retries, delay
            )
            time.sleep(delay)


def _reason(exc: BaseException) -> str:
    """One readable line: requests wraps urllib3 errors whose own str() is a tuple."""
    reason = exc.args[0] if exc.args else exc
    if isinstance(reason, BaseException) and reason.args:
        reason = reason.args[0]
    return str(reason)


def _download_once(
    session: requests.Session,
    url: str,
    part: Path,
    expected_size: int | None,
    timeout: float,
    progress: bool,
) -> None:
    """One request: continue ``part`` from its current size if it is still the same file on
    the server (If-Range), or start it afresh."""
    offset = part.stat().st_size if part.exists() else 0
    version = _read_version(part) if offset else None
    if offset and (version is None or version.get("url") != url):
        log.info("%s: no record of which version of %s it holds; starting over", part, url)
        _discard(part)
        offset = 0
    # identity: sizes are those of the file, not of a gzip stream that requests would decode.
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
        if validator := _if_range(version):
            headers["If-Range"] = validator
        log.info("resuming %s from byte %d", url, offset)
    with session.get(url, headers=headers, stream=True, timeout=timeout) as response:
        if response.status_code == 416 and offset:
            total = _total_behind_unsatisfiable_range(response, part, offset)
        else:
            total = _receive(response, url, part, offset, version, expected_size, progress)
    _check_received_size(url, part, total, expected_size)


def _read_version(part: Path) -> dict | None:
    try:
        return json.loads(version_path(part).read_text())
    except (OSError, ValueError):
        return None


def _if_range(version: dict) -> str | None:
    """The validator to send as If-Range: a strong ETag, else the Last-Modified date."""
    etag = version.get("etag")
    if etag and not etag.startswith("W/"):  # weak ETags are not allowed in If-Range
        return etag
    return version.get("last_modified")


def _same_version(version: dict | None, response: requests.Response, total: int | None) -> bool:
    """Whether a 206 answer comes from the file the partial download was started on (in case
    a server ignores If-Range, or sent no validator to begin with)."""
    if version is None:
        return True
    for key, header in (("etag", "ETag"), ("last_modified", "Last-Modified")):
        now = response.headers.get(header)
        if version.get(key) and now and now != version[key]:
            return False
    return version.get("size") is None or total is None or version["size"] == total


def _receive(
    response: requests.Response,
    url: str,
    part: Path,
    offset: int,
    version: dict | None,
    expected_size: int | None,
    progress: bool,
) -> int | None:
    """Write the body of ``response`` into ``part``; return the file's announced total size."""
    _raise_for_status(response, url)
    offset, total = _resume_point(response, part, offset)
    if offset and not _same_version(version, response, total):
        _discard(part)
        raise _TransientError("the file changed on the server since the download began")
    if total is not None and expected_size is not None and total != expected_size:
        _discard(part)
        raise DownloadError(
            f"{url}: the server offers {total} bytes but {expected_size} were expected; "
            "the file on the server changed or the expected size is wrong",
            url=url,
        )
    part.parent.mkdir(parents=True, exist_ok=True)  # only now: a 404 leaves no folder behind
    if (size := total if total is not None else expected_size) is not None:
        require_free_space(part.parent, size - offset, f"downloading {url}")
    if not offset:
        record = {
            "url": url,
            "etag": response.headers.get("ETag"),
            "last_modified": response.headers.get("Last-Modified"),
            "size": total,
        }
        atomic_write_text(version_path(part), json.dumps(record) + "\n")
    with (
        part.open("ab" if offset else "wb") as sink,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=part.name.removesuffix(".part"),
            disable=None if progress else True,  # None: only on a terminal
        ) as bar,
    ):
        for chunk in response.iter_content(chunk_size=DOWNLOAD_CHUNK_BYTES):
            sink.write(chunk)
            bar.update(len(chunk))
    return total


def _raise_for_status(response: requests.Response, url: str) -> None:
    status = response.status_code
    if status < 400:
        return
    reason = f"HTTP {status} {response.reason}".rstrip()
    if status >= 500 or status in RETRYABLE_STATUSES:
        raise _TransientError(reason, _retry_after(response.headers.get("Retry-After")))
    hint = " (check the dataset name and the server address)" if status == 404 else ""
    raise DownloadError(f"{url}: {reason}{hint}", url=url, status=status)


def _retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header: a number of seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - datetime.now(UTC)).total_seconds())


def _resume_point(response: requests.Response, part: Path, offset: int) -> tuple[int, int | None]:
    """Byte at which the body starts, and the file's total size if the server says it."""
    if response.status_code == 206:
        content_range = response.headers.get("Content-Range", "")
        start, total = _parse_content_range(content_range)
        if start != offset:
            _discard(part)
            raise _TransientError(
                f"the answer to a resume from byte {offset} has Content-Range "
                f"{content_range!r}; starting over"
            )
        return offset, total
    if offset:
        log.info("server ignored the Range request; starting %s again from byte 0", part.name)
    length = response.headers.get("Content-Length")
    return 0, int(length) if length and length.isdigit() else None


def _total_behind_unsatisfiable_range(response: requests.Response, part: Path, offset: int) -> int:
    """Answer 416 to a resume from ``offset``: fine if ``part`` already holds the whole file."""
    _, total = _parse_content_range(response.headers.get("Content-Range", ""))
    if total == offset:
        log.info("%s already holds all %d bytes", part, offset)
        return total
    _discard(part)
    raise _TransientError(f"server cannot resume from byte {offset} (HTTP 416); starting over")


def _parse_content_range(value: str) -> tuple[int | None, int | None]:
    """``bytes 100-199/1000`` -> (100, 1000); ``bytes */1000`` -> (None, 1000); junk -> None's."""
    match = CONTENT_RANGE.match(value.strip())
    if not match:
        return None, None
    start, _, total = match.groups()
    return (
        int(start) if start is not None else None,
        int(total) if total != "*" else None,
    )


def _check_received_size(
    url: str, part: Path, total: int | None, expected_size: int | None
) -> None:
    size = part.stat().st_size
    wanted = total if total is not None else expected_size
    if wanted is None or size == wanted:
        return
    if size < wanted:
        raise _TransientError(f"the body ended after {size} of {wanted} bytes")
    _discard(part)
    raise DownloadError(
        f"{url}: received {size} bytes but {wanted} were expected; "
        "the file on the server changed or the expected size is wrong",
        url=url,
    )


def require_free_space(folder: Path, needed_bytes: int, purpose: str) -> None:
    """Fail early, with a clear message, rather than when the disk is full half-way."""
    free = shutil.disk_usage(folder).free
    if needed_bytes > free:
        raise RuntimeError(
            f"{purpose} needs {needed_bytes / 1e9:.2f} GB but {folder} has only "
            f"{free / 1e9:.2f} GB free; free some space or choose another folder"
        )


# -- files pinned to a checksum --


def download_verified(
    url: str,
    dest: str | os.PathLike,
    checksum: str,
    *,
    expected_size: int | None = None,
    **options,
) -> Path:
    """Download ``url`` to ``dest`` (resumable, see :func:`download_file`) and check its
    checksum; a file already at ``dest`` with that checksum is kept as it is.

    A downloaded file with another checksum is deleted and :class:`ChecksumError` raised, so
    ``dest`` only ever holds the pinned file.
    """
    dest = Path(dest)
    if dest.is_file():
        check_checksum(dest, checksum)
        log.info("%s is there with the pinned checksum; nothing to download", dest)
        return dest
    download_file(url, dest, expected_size=expected_size, **options)
    try:
        check_checksum(dest, checksum)
    except ChecksumError:
        dest.unlink()
        raise
    log.info("%s has the pinned checksum %s", dest, checksum)
    return dest


def fetch_imagenet_weights(pinned: ImagenetFile, dest: str | os.PathLike, **options) -> Path:
    """Put one backbone's ImageNet weights file at ``dest``, checked against its pin.

    Raises :class:`~efficientcellseg.model.WeightsNotFoundError` when the file cannot be had,
    saying how to provide it by hand or to choose random initialisation instead.
    """
    from .model import WeightsNotFoundError, imagenet_weights_advice

    try:
        return download_verified(
            pinned.url, dest, pinned.checksum, expected_size=pinned.bytes, **options
        )
    except (DownloadError, ChecksumError) as exc:
        raise WeightsNotFoundError(
            f"no ImageNet weights for the {pinned.backbone} encoder: {exc}\nTo go on, "
            + imagenet_weights_advice(pinned, dest)
        ) from exc


# -- safe extraction --


def extract_zip(
    zip_path: str | os.PathLike,
    dest_dir: str | os.PathLike,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> Path:
    """Extract ``zip_path`` into the new folder ``dest_dir`` (all or nothing) and return it.

    Every member is checked before anything is written: absolute paths, ``..`` components,
    symbolic links and other special files, encrypted members, and a declared total above
    ``max_bytes`` are refused with :class:`UnsafeArchiveError`. The bytes actually written are
    counted too, because a hostile archive can declare small sizes. A damaged archive raises
    :class:`CorruptArchiveError`. Extraction goes to a temporary folder beside ``dest_dir``
    that is renamed into place only when complete and removed on any failure.
    """
    zip_path, dest_dir = Path(zip_path), Path(dest_dir)
    if dest_dir.exists():
        raise FileExistsError(f"{dest_dir} already exists; extract into a folder not made yet")
    # The staging folder is made like any folder (the umask's mode): it may become the dataset.
    with atomic_output(dest_dir) as staging:
        staging.mkdir()
        with _open_zip(zip_path) as archive:
            members = [(info, _member_path(info, zip_path)) for info in archive.infolist()]
            _check_member_kinds(members, zip_path)
            declared = sum(info.file_size for info in archive.infolist())
            _check_declared_size(zip_path, declared, max_bytes)
            require_free_space(dest_dir.parent, declared, f"extracting {zip_path}")
            written = _extract_members(archive, members, staging, zip_path, max_bytes)
    log.info(
        "extracted %d members (%d bytes) of %s to %s", len(members), written, zip_path, dest_dir
    )
    return dest_dir


def _open_zip(zip_path: Path) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(zip_path)
    except zipfile.BadZipFile as exc:
        raise CorruptArchiveError(
            f"{zip_path}: not a valid zip archive ({exc}); the download may be damaged: "
            "delete it and download it again"
        ) from exc


def _member_path(info: zipfile.ZipInfo, zip_path: Path) -> PurePosixPath:
    """The member's path relative to the destination, or :class:`UnsafeArchiveError`."""
    name = info.filename.replace("\\", "/")  # archives made on Windows may use backslashes
    path = PurePosixPath(name)
    problem = None
    if name.startswith("/") or PureWindowsPath(name).drive:
        problem = "has an absolute path"
    elif ".." in path.parts:
        problem = "has a '..' component that points outside the destination"
    elif not path.parts:
        problem = "has an empty name"
    elif (kind := stat.S_IFMT(info.external_attr >> 16)) == stat.S_IFLNK:
        problem = "is a symbolic link"
    elif kind not in (0, stat.S_IFREG, stat.S_IFDIR):
        problem = "is a special file (not a plain file or folder)"
    elif info.flag_bits & 0x1:
        problem = "is encrypted"
    if problem:
        raise UnsafeArchiveError(
            f"{zip_path}: member {info.filename!r} {problem}; refusing to extract this archive"
        )
    return path


def _check_member_kinds(members: list[tuple[zipfile.ZipInfo, PurePosixPath]], zip_path: Path):
    """Refuse a path that is both a file and a folder (``X/01`` and ``X/01/t000.tif``), and a
    file that appears twice: the second would replace or collide with the first."""
    files: set[PurePosixPath] = set()
    folders: set[PurePosixPath] = set()
    for info, path in members:
        folders.update(path.parents)
        if info.filename.replace("\\", "/").endswith("/"):
            folders.add(path)
        elif path in files:
            raise UnsafeArchiveError(
                f"{zip_path}: member {info.filename!r} appears twice; refusing to extract "
                "this archive"
            )
        else:
            files.add(path)
    if both := sorted(files & folders):
        raise UnsafeArchiveError(
            f"{zip_path}: member {both[0].as_posix()!r} is both a file and a folder; refusing "
            "to extract this archive"
        )


def _check_declared_size(zip_path: Path, declared: int, max_bytes: int) -> None:
    if declared > max_bytes:
        raise UnsafeArchiveError(
            f"{zip_path}: members would unpack to {declared:,} bytes, more than the limit of "
            f"{max_bytes:,}; raise max_bytes if the archive is trusted"
        )


def _extract_members(
    archive: zipfile.ZipFile,
    members: list[tuple[zipfile.ZipInfo, PurePosixPath]],
    staging: Path,
    zip_path: Path,
    max_bytes: int,
) -> int:
    """Write every member under ``staging``; return the number of bytes written."""
    written = 0
    for info, relative in members:
        target = staging.joinpath(*relative.parts)
        if info.filename.replace("\\", "/").endswith("/"):
            target.mkdir(parents=True, exist_ok=True)
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        written += _copy_member(archive, info, target, zip_path, max_bytes - written, max_bytes)
    return written


def _copy_member(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    zip_path: Path,
    budget: int,
    max_bytes: int,
) -> int:
    """Copy one member chunk by chunk, stopping as soon as the byte budget is exceeded."""
    copied = 0
    try:
        with archive.open(info) as source, target.open("xb") as sink:
            while chunk := source.read(EXTRACT_CHUNK_BYTES):
                copied += len(chunk)
                if copied > budget:
                    raise UnsafeArchiveError(
                        f"{zip_path}: member {info.filename!r} unpacks past the limit of "
                        f"{max_bytes:,} bytes although the archive declares less; "
                        "the archive lies about its sizes"
                    )
                sink.write(chunk)
    except (zipfile.BadZipFile, zlib.error, EOFError) as exc:
        raise CorruptArchiveError(
            f"{zip_path}: member {info.filename!r} is damaged ({exc}); "
            "delete the zip and download it again"
        ) from exc
    return copied


# -- CTC datasets --


def dataset_urls(
    ctc_name: str, kind: str = "training", base_url: str = WorkflowSettings.ctc_server
) -> list[str]:
    """URLs to try, in order, for a CTC dataset zip (test sets have two address forms)."""
    if kind not in ("training", "test"):
        raise ValueError(f"kind must be 'training' or 'test', not {kind!r}")
    if not DATASET_NAME.match(ctc_name):
        raise ValueError(f"{ctc_name!r} is not a CTC dataset name (such as Fluo-C3DL-MDA231)")
    folders = TRAINING_FOLDERS if kind == "training" else TEST_FOLDERS
    return [f"{base_url.rstrip('/')}/{folder}/{ctc_name}.zip" for folder in folders]


def download_dataset(
    ctc_name: str,
    dest_root: str | os.PathLike,
    *,
    kind: str = "training",
    base_url: str = WorkflowSettings.ctc_server,
    expected_size: int | None = None,
    keep_zip: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    retries: int = 5,
    backoff: float = 2.0,
    timeout: float = 60.0,
    progress: bool = True,
    session: requests.Session | None = None,
) -> Path:
    """Download and extract a CTC dataset so that it sits at ``dest_root/<ctc_name>/01 ...``.

    The zip goes to ``dest_root/<ctc_name>.zip`` (reused if already there with the right size)
    and is deleted after extraction unless ``keep_zip``. Test sets are looked up under
    ``test-datasets/`` and then under the older ``challenge-datasets/``. Zips with a top-level
    ``<ctc_name>/`` folder (as the CTC ships them) and flat zips both work. The dataset folder is
    renamed into place only once it is complete, so when it exists it is complete and nothing
    is done. Download options are those of :func:`download_file`.
    """
    urls = dataset_urls(ctc_name, kind, base_url)
    dest_root = ctc.check_output(dest_root, folder=True)
    dataset_dir = dest_root / ctc_name
    if _is_dataset(dataset_dir):
        log.info("%s is already there; nothing to do", dataset_dir)
        return dataset_dir
    _remove_empty_folder(dataset_dir)
    zip_path = dest_root / f"{ctc_name}.zip"
    if zip_path.is_file() and expected_size in (None, zip_path.stat().st_size):
        log.info("using the zip downloaded before: %s", zip_path)
    else:
        options = dict(retries=retries, backoff=backoff, timeout=timeout, progress=progress)
        try:
            _download_first_found(urls, zip_path, expected_size, session, **options)
        except DownloadError as exc:
            if exc.status == 404:
                raise
            raise DownloadError(
                f"{exc}\nNo download? A copy you already have works too: put the zip at "
                f"{zip_path} (it is unpacked without downloading"
                + (f" when it has {expected_size:,} bytes" if expected_size else "")
                + f"), or unpack it so that {dataset_dir}/01/t000.tif exists (for the workflow, "
                "`source: local` in the dataset's config entry says the data is on disk); a "
                "mirror of the CTC server: `ctc_server` in the config (--base-url here)",
                url=exc.url,
                status=exc.status,
            ) from exc
    sequences = _unpack_dataset(zip_path, dataset_dir, max_bytes)
    if not keep_zip:
        zip_path.unlink()
        log.info("deleted %s after extraction", zip_path)
    log.info("%s %s set is in %s (sequences %s)", ctc_name, kind, dataset_dir, ", ".join(sequences))
    return dataset_dir


def _is_dataset(dataset_dir: Path) -> bool:
    try:
        ctc.discover_sequences(dataset_dir)
    except ctc.CTCFormatError:
        return False
    return True


def _remove_empty_folder(dataset_dir: Path) -> None:
    """An empty folder (left by a workflow manager, say) is fine to replace; anything else not."""
    if not dataset_dir.exists():
        return
    if dataset_dir.is_dir() and not any(dataset_dir.iterdir()):
        dataset_dir.rmdir()
        return
    raise ctc.CTCFormatError(
        f"{dataset_dir} exists but is not a CTC dataset (no 01/t000.tif ...); "
        "move or delete it, then run again"
    )


def _download_first_found(
    urls: list[str],
    zip_path: Path,
    expected_size: int | None,
    session: requests.Session | None,
    **options,
) -> Path:
    for url in urls:
        try:
            return download_file(
                url, zip_path, expected_size=expected_size, session=session, **options
            )
        except DownloadError as exc:
            if exc.status != 404:
                raise
            log.info("%s: not found (HTTP 404)", url)
    raise DownloadError(
        f"no dataset zip at {' nor '.join(urls)} (HTTP 404); check the dataset name "
        "(such as Fluo-C3DL-MDA231) and whether it has a set of this kind",
        url=urls[-1],
        status=404,
    )


def _unpack_dataset(zip_path: Path, dataset_dir: Path, max_bytes: int) -> list[str]:
    """Extract next to ``dataset_dir``, check the CTC layout, then rename into place.

    A damaged zip is deleted; a refused one (unsafe, or no CTC dataset inside) is renamed to
    ``<zip>.refused``: either way the next run downloads it again.
    """
    staging = dataset_dir.with_name(f".{dataset_dir.name}.unpacked")
    shutil.rmtree(staging, ignore_errors=True)  # left behind by an interrupted run
    try:
        try:
            extract_zip(zip_path, staging, max_bytes=max_bytes)
        except CorruptArchiveError as exc:
            zip_path.unlink(missing_ok=True)
            raise CorruptArchiveError(
                f"{zip_path} is damaged and has been deleted: run again to download it afresh "
                f"(details: {exc})"
            ) from exc
        except UnsafeArchiveError as exc:
            raise UnsafeArchiveError(f"{exc}; {_set_aside(zip_path)}") from exc
        root = _dataset_root(staging, dataset_dir.name)
        try:
            sequences = ctc.discover_sequences(root)
        except ctc.CTCFormatError:
            raise ctc.CTCFormatError(
                f"{zip_path} does not hold a CTC dataset: no folder such as 01/ with t000.tif ... "
                f"at its top or inside one top-level folder; {_set_aside(zip_path)}"
            ) from None
        os.replace(root, dataset_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return sequences


def _set_aside(zip_path: Path) -> str:
    """Rename a refused zip so that it is not used again; say where it went."""
    refused = zip_path.with_name(zip_path.name + ".refused")
    os.replace(zip_path, refused)
    return (
        f"it was moved to {refused} for inspection (delete it when done); running again "
        "downloads the zip afresh"
    )


def _dataset_root(extracted: Path, ctc_name: str) -> Path:
    """The dataset folder inside an extracted zip: its single top-level folder, or the top."""
    entries = [p for p in extracted.iterdir() if p.name != "__MACOSX"]
    if (
        len(entries) == 1
        and entries[0].is_dir()
        and not ctc.SEQUENCE_PATTERN.match(entries[0].name)
    ):
        if entries[0].name != ctc_name:
            log.warning("the zip holds %s/ rather than %s/; using it", entries[0].name, ctc_name)
        return entries[0]
    return extracted
