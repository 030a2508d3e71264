"""The bulk snapshot's source, on local disk: what may be fetched, and how much.

The cleaning query and the load steps every warehouse shares are ``bulk_cleaning``; each warehouse
module stages the CSV its own way (DuckDB reads it itself, BigQuery runs a load job). The source is a local file or an https:// URL on the Companies House download host, fetched and
unpacked under size caps checked before extraction; a URL is logged and stored without its query
string or userinfo (issue 19).
"""

from __future__ import annotations

import re
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit

import requests
from urllib3.exceptions import LocationParseError
from urllib3.util import parse_url

from ch_pipeline.companies_house.bulk_csv import check_header, csv_member_info

Progress = Callable[[str], None]


# --- Getting the CSV onto local disk: what may be fetched, and how much (issue 19) ---------------
#
# A source is a local regular file, or an https:// URL on a host of ALLOWED_HOSTS; a redirect is
# followed (by hand, hop by hop) only to such a URL too, so plain http is never fetched. The host list
# is a constant, not a setting: the file is published only on the Companies House download host, and
# a copy from anywhere else is downloaded by hand and loaded by path.

ALLOWED_HOSTS: frozenset[str] = frozenset({"download.companieshouse.gov.uk"})
MAX_REDIRECTS = 5

# Size caps, checked before anything is unpacked and again while bytes are copied. Sized on the
# published BasicCompanyDataAsOneFile (a ~450 MB zip holding one 2.3-2.7 GB CSV of ~5.5M rows,
# compressed ~5:1) with years of growth to spare, and far below what a zip bomb needs.
MAX_DOWNLOAD_BYTES = 2 * 1024**3  # ~4x the zip (a bare CSV that large is loaded from a local path)
MAX_CSV_BYTES = 8 * 1024**3  # ~3x the CSV: the zip's declared size, bytes extracted, or a local CSV's size
MAX_COMPRESSION_RATIO = 50  # the real file ~5:1, the generated sample ~12:1; deflate bombs ~1000:1
HEADER_LINE_LIMIT = 64 * 1024  # the header line is ~1.3 KB; never read an unbounded "line"
COPY_CHUNK = 8 * 1024 * 1024
_TIMEOUT = (10, 120)  # connect, read (per socket read)
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class BulkSourceError(ValueError):
    """A bulk source refused: not an allowed URL or a regular file, or over a size cap."""


@dataclass(frozen=True)
class BulkLimits:
    """The caps one load runs under: the constants above by default. A caller may lower them (a test,
    a cautious run), never raise them; the asset runs with the defaults (no run config for them)."""

    max_download_bytes: int = MAX_DOWNLOAD_BYTES
    max_csv_bytes: int = MAX_CSV_BYTES
    max_compression_ratio: float = MAX_COMPRESSION_RATIO

    def __post_init__(self) -> None:
        for name, ceiling in (("max_download_bytes", MAX_DOWNLOAD_BYTES), ("max_csv_bytes", MAX_CSV_BYTES),
                              ("max_compression_ratio", MAX_COMPRESSION_RATIO)):
            if not 0 < getattr(self, name) <= ceiling:
                raise ValueError(f"{name} must be above 0 and at most {ceiling:,}: limits can only be lowered")


DEFAULT_LIMITS = BulkLimits()


def is_url(source: str) -> bool:
    return bool(_URL.match(source))


def redact_source(source: str) -> str:
    """`source` as it may be logged or stored: a URL without userinfo, query string or fragment."""
    if not is_url(source):
        return source
    try:
        parts = urlsplit(source)
    except ValueError:  # e.g. an unclosed IPv6 bracket: show no more than the scheme
        return source.split(":", 1)[0] + "://(unparseable URL)"
    netloc = parts.netloc.rpartition("@")[2]
    try:
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port is not None else "")
    except ValueError:  # a malformed port: keep the netloc as written, minus userinfo
        pass
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def check_url(url: str, redirected_from: str | None = None) -> None:
    """Refuse, before any connection, a URL that is not https:// on a host of ALLOWED_HOSTS."""
    shown = redact_source(url) + (f" (redirected from {redact_source(redirected_from)})" if redirected_from else "")
    allowed = ", ".join(sorted(ALLOWED_HOSTS))
    if re.search(r"[\\\s\x00-\x1f\x7f]", url):  # read differently by different URL parsers
        raise BulkSourceError(f"refusing {shown}: backslash, space or control character in the URL")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (validates the port)
        # The host as urllib.parse reads it, and as urllib3 (what requests connects to) reads it: both
        # must be on the allowlist, so no parser difference can smuggle another host through.
        hosts = {(parts.hostname or "").rstrip("."), (parse_url(url).host or "").lower().strip("[]").rstrip(".")}
    except (ValueError, LocationParseError):
        raise BulkSourceError(f"refusing {shown}: not a valid URL") from None
    if parts.scheme != "https":
        raise BulkSourceError(
            f"refusing {shown}: a bulk source is a local path or an https:// URL on an allowed host ({allowed})"
        )
    if not hosts <= ALLOWED_HOSTS:
        listed = ", ".join(repr(h) for h in sorted(hosts - ALLOWED_HOSTS))
        raise BulkSourceError(f"refusing {shown}: host {listed} is not on the allowlist ({allowed})")


def _scrub(text: str) -> str:
    """An HTTP library's error message without the query strings and userinfo it may quote."""
    return re.sub(r"(?<=//)[^/\s@]*@", "", re.sub(r"\?\S*", "", text))


@contextmanager
def local_csv(source: str, progress: Progress = print, limits: BulkLimits = DEFAULT_LIMITS) -> Iterator[Path]:
    """A local path to the CSV that `source` (a path or an allowed https URL) names, .csv or .zip,
    within `limits`; temporary files are removed after."""
    if is_url(source):
        check_url(source)  # before the scratch directory, before any connection
    with tempfile.TemporaryDirectory(prefix="ch-bulk-") as scratch:
        path = _download(source, Path(scratch), progress, limits) if is_url(source) else _local_file(source)
        if path.suffix.lower() == ".zip":
            path = _unzip(path, Path(scratch), progress, limits)
        elif (size := path.stat().st_size) > limits.max_csv_bytes:
            raise BulkSourceError(f"{path.name} is {size:,} bytes, over the limit of {limits.max_csv_bytes:,}")
        with path.open(encoding="utf-8-sig") as stream:
            check_header(stream.readline(HEADER_LINE_LIMIT))
        yield path


def _local_file(source: str) -> Path:
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"bulk CSV not found: {source} (set CH_BULK_CSV to a path or an https URL)")
    if not path.is_file():  # a directory, /dev/zero, a FIFO: nothing to load, possibly endless
        raise BulkSourceError(f"bulk source {source} is not a regular file")
    return path


def copy_capped(source, target, max_bytes: int, what: str, report: Callable[[int], None] | None = None) -> int:
    """Copy file-like `source` into `target`, failing before writing past `max_bytes` (whatever the
    source declared its size to be); returns the bytes copied."""
    done = 0
    while chunk := source.read(COPY_CHUNK):
        done += len(chunk)
        if done > max_bytes:
            raise BulkSourceError(f"{what} is more than {max_bytes:,} bytes: stopped")
        target.write(chunk)
        if report:
            report(done)
    return done


def _download(url: str, scratch: Path, progress: Progress, limits: BulkLimits) -> Path:
    shown = redact_source(url)
    name = PurePosixPath(unquote(urlsplit(url).path)).name
    target = scratch / (name if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]{0,200}", name) else "download")
    progress(f"downloading {shown}")
    failure = None
    with _ManualRedirectSession() as session:
        try:
            with _get_allowed(session, url) as response:
                total = _check_response(response, shown, limits)
                reported = 0

                def report(done: int) -> None:
                    nonlocal reported
                    if done - reported >= 100 * COPY_CHUNK or done == total:
                        progress(f"downloaded {done / 1e6:,.0f} MB" + (f" of {total / 1e6:,.0f} MB" if total else ""))
                        reported = done

                response.raw.decode_content = False  # a compressed body is refused above, never inflated here
                with target.open("wb") as out:
                    copy_capped(response.raw, out, limits.max_download_bytes, f"the download of {shown}", report)
        except requests.RequestException as error:
            # Raised below, outside this handler, so no traceback carries the library's own message.
            failure = f"downloading {shown} failed: {type(error).__name__}: {_scrub(str(error))}"
    if failure:
        raise BulkSourceError(failure)
    return target


class _ManualRedirectSession(requests.Session):
    """A Session that leaves every redirect to `_get_allowed`. requests' own handling, even with
    allow_redirects=False, reads the whole body of a 3xx response into memory: an uncapped read."""

    def resolve_redirects(self, *args, **kwargs):
        return iter(())


def _get_allowed(session: requests.Session, url: str) -> requests.Response:
    """GET `url`, following redirects by hand: each hop is checked before it is connected to."""
    previous = None
    for _ in range(MAX_REDIRECTS + 1):
        check_url(url, redirected_from=previous)
        response = session.get(
            url, stream=True, allow_redirects=False, timeout=_TIMEOUT, headers={"Accept-Encoding": "identity"}
        )
        location = session.get_redirect_target(response)
        if location is None:
            return response
        response.close()  # its body unread
        previous, url = url, urljoin(url, location)
    raise BulkSourceError(f"refusing {redact_source(url)}: more than {MAX_REDIRECTS} redirects")


def _check_response(response: requests.Response, shown: str, limits: BulkLimits) -> int:
    """Refuse a response that is not a 200 with an identity body within the download cap; returns its
    Content-Length, 0 when not given."""
    if response.status_code != 200:
        raise BulkSourceError(f"downloading {shown} failed: HTTP {response.status_code} {response.reason}")
    encoding = response.headers.get("content-encoding", "").strip().lower()
    if encoding not in ("", "identity"):
        raise BulkSourceError(f"downloading {shown}: refusing a body sent with Content-Encoding {encoding!r}")
    length = response.headers.get("content-length", "").strip()
    if length.isdigit() and int(length) > limits.max_download_bytes:
        raise BulkSourceError(
            f"downloading {shown}: Content-Length {int(length):,} bytes is over the limit of {limits.max_download_bytes:,}"
        )
    return int(length) if length.isdigit() else 0


def _unzip(zip_path: Path, scratch: Path, progress: Progress, limits: BulkLimits) -> Path:
    """Extract the one CSV after checking what the central directory declares (size, ratio) and the
    header line, counting the bytes actually extracted."""
    with zipfile.ZipFile(zip_path) as archive:
        member = csv_member_info(archive)
        what = f"{member.filename} in {zip_path.name}"
        if member.file_size > limits.max_csv_bytes:
            raise BulkSourceError(
                f"{what} declares {member.file_size:,} bytes uncompressed, over the limit of "
                f"{limits.max_csv_bytes:,}: refused before extracting"
            )
        ratio = member.file_size / max(member.compress_size, 1)
        if ratio > limits.max_compression_ratio:
            raise BulkSourceError(
                f"{what} has a compression ratio of {ratio:,.0f}:1, over the limit of "
                f"{limits.max_compression_ratio:,.0f}:1 (a zip bomb?): refused before extracting"
            )
        target = scratch / Path(member.filename).name
        progress(f"unzipping {member.filename} ({member.file_size / 1e6:,.0f} MB) from {zip_path.name}")
        with archive.open(member) as source, target.open("wb") as out:
            header = source.readline(HEADER_LINE_LIMIT)
            check_header(header.decode("utf-8-sig", errors="replace"))  # a wrong file is refused unextracted
            out.write(header)
            copy_capped(source, out, limits.max_csv_bytes - len(header), what)
    return target
