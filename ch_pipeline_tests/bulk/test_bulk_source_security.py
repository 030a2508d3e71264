"""The bulk loader fetches only what it should, bounded (issue 19): an ``https://`` URL on a host of the
allowlist, or a local file; the download, the zip's declared sizes and compression ratio checked before
anything is unpacked; no query string or userinfo in materialization metadata or logs.

Real sockets on 127.0.0.1 only: a plain TCP listener that must see no connection, and a local HTTPS
server with a self-signed certificate made here (the allowlist is widened to 127.0.0.1 where a test
needs a server). Real zips, real DuckDB, real Dagster runs.
"""

from __future__ import annotations

import datetime as dt
import functools
import http.server
import ipaddress
import queue
import resource
import signal
import socket
import ssl
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import dagster as dg
import duckdb
import pytest

from ch_pipeline.companies_house.bulk_csv import HEADER, write_sample
from ch_pipeline.companies_house.bulk_csv import SAMPLE_FILE_DATE as FILE_DATE
from ch_pipeline.companies_house.bulk_csv import file_date_in_name
from ch_pipeline.defs.bulk import company_house_bulk
from ch_pipeline.defs.resources import WarehouseResource
from ch_pipeline.warehouse import bulk_load
from ch_pipeline.warehouse.duckdb_warehouse import load_duckdb
from ch_pipeline_tests.dbt.history import parse_bulk_csv

CSV_NAME = "BasicCompanyDataAsOneFile-2026-11-01.csv"
SECRET = "SECRET"  # a query token; nothing the run records may contain it
PASSWORD = "PASSWORD"  # userinfo


# --- Helpers: a listener that must see nothing, an HTTPS server, Dagster runs ------------------


class Listener:
    """A TCP socket on 127.0.0.1 that accepts, counts and drops every connection."""

    def __init__(self) -> None:
        self.socket = socket.create_server(("127.0.0.1", 0))
        self.port = self.socket.getsockname()[1]
        self.count = 0
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                connection, _ = self.socket.accept()
            except OSError:
                return
            self.count += 1
            connection.close()

    def connections(self) -> int:
        """Connections so far (anything that was on its way has arrived within the grace period)."""
        self._thread.join(timeout=0.2)
        return self.count

    def close(self) -> None:
        self.socket.close()


@pytest.fixture
def listener() -> Iterator[Listener]:
    listening = Listener()
    yield listening
    listening.close()


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, its own CA, and its key: made at run time, never committed."""
    pytest.importorskip("cryptography")
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = dt.datetime.now(dt.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


class Handler(http.server.SimpleHTTPRequestHandler):
    """Serves the directory; `server.redirects` maps a path to a Location (sent with a body of
    `server.redirect_body` bytes, whether it was all sent is put on `server.redirect_bodies`);
    /unsized/<n> streams n bytes with no Content-Length; every request path is recorded in `server.seen`."""

    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.server.seen.append(self.path)
        path = self.path.split("?")[0]
        if path in self.server.redirects:
            body = self.server.redirect_body
            self.send_response(302)
            self.send_header("Location", self.server.redirects[path])
            self.send_header("Content-Length", str(body))
            self.end_headers()
            try:
                for _ in range(body // 65536):
                    self.wfile.write(b"r" * 65536)
                self.server.redirect_bodies.put("sent")
            except OSError:
                self.server.redirect_bodies.put("cut off")
        elif path.startswith("/unsized/"):
            size = int(path.rsplit("/", 1)[1])
            self.send_response(200)
            self.end_headers()  # HTTP/1.0, no length: the body ends when the connection closes
            for _ in range(size // 65536):
                self.wfile.write(b"x" * 65536)
        else:
            super().do_GET()

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """A local HTTPS server over `tmp_path/www` that requests trusts (REQUESTS_CA_BUNDLE), with 127.0.0.1
    added to the loader's host allowlist."""
    www = tmp_path / "www"
    www.mkdir()
    cert, key = self_signed_certificate(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(www)))
    server.socket = context.wrap_socket(server.socket, server_side=True)
    server.seen, server.redirects, server.www = [], {}, www
    server.redirect_body, server.redirect_bodies = 0, queue.Queue()
    server.base = f"https://127.0.0.1:{server.server_port}"
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    monkeypatch.setattr(bulk_load, "ALLOWED_HOSTS", frozenset({"127.0.0.1"}), raising=False)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def sample_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_sample(tmp_path_factory.mktemp("bulk") / CSV_NAME, rows=300, seed=3)


@pytest.fixture
def dagster_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CH_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.delenv("CH_BULK_CSV", raising=False)


def materialize_bulk(tmp_path: Path, source: str) -> tuple[dg.ExecuteInJobResult, str]:
    """One real run of the asset with run config `source`; returns it and everything the run recorded
    (every event log entry serialized: user logs, step failures with their errors, materializations)."""
    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize(
        [company_house_bulk],
        resources={"warehouse": WarehouseResource(duckdb_path=str(tmp_path / "w.duckdb"))},
        run_config={"ops": {"company_house_bulk": {"config": {"source": source}}}},
        partition_key=(file_date_in_name(source) or FILE_DATE).isoformat(),
        instance=instance,
        raise_on_error=False,
    )
    recorded = "\n".join(dg.serialize_value(entry) for entry in instance.all_logs(result.run_id))
    return result, recorded


def step_failure(result: dg.ExecuteInJobResult) -> str:
    [failure] = [event for event in result.all_events if event.is_step_failure]
    return failure.step_failure_data.error.to_string()


def load(source: str, **kwargs) -> int:
    with duckdb.connect() as con:
        return load_duckdb(con, source, FILE_DATE, progress=lambda _: None, **kwargs)


@contextmanager
def no_file_larger_than(limit: int) -> Iterator[None]:
    """The kernel refuses (EFBIG) any write that would make a file larger than `limit`, so a test
    that passes inside this block wrote nothing larger."""
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def zip_bomb(path: Path, uncompressed: int) -> Path:
    """A zip whose one CSV is the published header then `uncompressed` bytes of zeros: ~1000:1."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        with archive.open(CSV_NAME, "w", force_zip64=True) as member:
            member.write((",".join(HEADER) + "\r\n").encode())
            block = bytes(1 << 20)
            for _ in range(uncompressed >> 20):
                member.write(block)
    return path


# --- Where a source may come from --------------------------------------------------------------


def test_an_http_source_is_refused_before_any_connection(listener: Listener, tmp_path: Path, dagster_env, monkeypatch):
    # Even with the host on the allowlist: plain http is never fetched.
    monkeypatch.setattr(bulk_load, "ALLOWED_HOSTS", frozenset({"127.0.0.1"}), raising=False)
    result, _ = materialize_bulk(tmp_path, f"http://127.0.0.1:{listener.port}/{CSV_NAME}")
    assert not result.success
    assert "https" in step_failure(result)
    assert listener.connections() == 0


@pytest.mark.parametrize(
    "source",
    [
        "https://127.0.0.1:{port}/BasicCompanyDataAsOneFile.zip",
        "https://localhost:{port}/BasicCompanyDataAsOneFile.zip",
        "https://download.companieshouse.gov.uk@127.0.0.1:{port}/BasicCompanyDataAsOneFile.zip",
        # urllib.parse reads the allowed host here, urllib3 (what requests connects to) reads 127.0.0.1
        "https://127.0.0.1:{port}\\@download.companieshouse.gov.uk/BasicCompanyDataAsOneFile.zip",
        "HTTPS://127.0.0.1:{port}/BasicCompanyDataAsOneFile.zip",
        "ftp://127.0.0.1:{port}/BasicCompanyDataAsOneFile.zip",
    ],
)
def test_a_host_not_on_the_allowlist_is_refused_before_any_connection(source: str, listener: Listener, tmp_path: Path, dagster_env):
    result, _ = materialize_bulk(tmp_path, source.format(port=listener.port))
    assert not result.success
    error = step_failure(result)
    assert "download.companieshouse.gov.uk" in error  # the error names the allowlist
    assert listener.connections() == 0


def test_the_default_allowlist_is_the_companies_house_download_host():
    assert bulk_load.ALLOWED_HOSTS == frozenset({"download.companieshouse.gov.uk"})


def test_a_redirect_is_followed_only_to_https_on_the_allowlist(https_server, sample_csv: Path, listener: Listener):
    (https_server.www / CSV_NAME).write_bytes(sample_csv.read_bytes())
    https_server.redirects.update({
        "/to-http": f"http://127.0.0.1:{listener.port}/{CSV_NAME}",
        "/to-other-host": f"https://localhost:{listener.port}/{CSV_NAME}",
        "/moved": f"/{CSV_NAME}",
        "/loop": "/loop",
    })
    with pytest.raises(ValueError, match="https"):
        load(f"{https_server.base}/to-http")
    with pytest.raises(ValueError, match="not on the allowlist"):
        load(f"{https_server.base}/to-other-host")
    assert listener.connections() == 0
    with pytest.raises(ValueError, match="redirects"):
        load(f"{https_server.base}/loop")
    assert load(f"{https_server.base}/moved") == 300  # a redirect within the allowlist is fine
    assert https_server.seen[-2:] == ["/moved", f"/{CSV_NAME}"]


def test_the_body_of_a_redirect_is_not_read(https_server, listener: Listener):
    """requests reads a redirect's whole body into memory, even with allow_redirects=False: an uncapped read."""
    https_server.redirect_body = 64 << 20  # far more than socket buffers hold
    https_server.redirects["/to-http"] = f"http://127.0.0.1:{listener.port}/{CSV_NAME}"
    with pytest.raises(ValueError, match="https"):
        load(f"{https_server.base}/to-http")
    assert https_server.redirect_bodies.get(timeout=30) == "cut off"
    assert listener.connections() == 0


def test_an_allowed_https_url_is_downloaded_and_unzipped(https_server, sample_csv: Path):
    """What test_bulk_load's plain-http download covered, over https now: the published zip, fetched."""
    with zipfile.ZipFile(https_server.www / "BasicCompanyDataAsOneFile-2026-11-01.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.write(sample_csv, sample_csv.name)
    with duckdb.connect() as con:
        assert load_duckdb(con, f"{https_server.base}/BasicCompanyDataAsOneFile-2026-11-01.zip", FILE_DATE, progress=lambda _: None) == 300
        loaded = {number: (name, *rest) for name, number, *rest in con.execute("select * exclude (file_date) from company_house_bulk").fetchall()}
    assert loaded == parse_bulk_csv(sample_csv)


def test_a_local_path_keeps_working_end_to_end(sample_csv: Path, tmp_path: Path, dagster_env):
    archive = tmp_path / "BasicCompanyDataAsOneFile-2026-11-01.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(sample_csv, sample_csv.name)
    result, _ = materialize_bulk(tmp_path, str(archive))
    assert result.success
    [materialization] = result.asset_materializations_for_node("company_house_bulk")
    assert materialization.metadata["dagster/row_count"].value == 300
    assert materialization.metadata["source"].value == archive.name


@pytest.mark.parametrize("path", ["/dev/zero", "{tmp}"])
def test_a_local_path_must_be_a_regular_file(path: str, tmp_path: Path):
    if not Path(path.format(tmp=tmp_path)).exists():
        pytest.skip(f"{path} does not exist here")
    with pytest.raises(ValueError, match="not a regular file"):
        load(path.format(tmp=tmp_path))


# --- Nothing secret recorded -------------------------------------------------------------------


def test_a_query_token_and_userinfo_are_in_no_metadata_and_no_log(https_server, sample_csv: Path, tmp_path: Path, dagster_env, capfd):
    (https_server.www / CSV_NAME).write_bytes(sample_csv.read_bytes())
    port = https_server.server_port
    result, recorded = materialize_bulk(tmp_path, f"https://user:{PASSWORD}@127.0.0.1:{port}/{CSV_NAME}?token={SECRET}#{SECRET}")
    assert result.success
    assert https_server.seen == [f"/{CSV_NAME}?token={SECRET}"]  # the token still reaches the server
    [materialization] = result.asset_materializations_for_node("company_house_bulk")
    assert materialization.metadata["source"].value == f"https://127.0.0.1:{port}/{CSV_NAME}"
    assert f"https://127.0.0.1:{port}/{CSV_NAME}" in recorded  # the logs do say what was loaded
    printed = capfd.readouterr()
    for text in (recorded, printed.out, printed.err):
        assert SECRET not in text and PASSWORD not in text


def test_a_failed_download_leaves_no_token_in_the_error(https_server, tmp_path: Path, dagster_env, capfd):
    port = https_server.server_port
    with socket.create_server(("127.0.0.1", 0)) as closed:
        closed_port = closed.getsockname()[1]
    for source, why in ((f"https://127.0.0.1:{port}/missing.zip?token={SECRET}", "HTTP 404"),  # an allowed host
                        (f"https://127.0.0.1:{closed_port}/x.zip?token={SECRET}", "ConnectionError"),  # requests' message
                        (f"https://{PASSWORD}@elsewhere.invalid/x.zip?token={SECRET}", "not on the allowlist")):
        result, recorded = materialize_bulk(tmp_path, source)
        assert not result.success
        assert why in step_failure(result)
        printed = capfd.readouterr()
        for text in (recorded, step_failure(result), printed.out, printed.err):
            assert SECRET not in text and PASSWORD not in text


@pytest.mark.parametrize(
    ("source", "shown"),
    [
        ("https://download.companieshouse.gov.uk/BasicCompanyDataAsOneFile-2026-11-01.zip",
         "https://download.companieshouse.gov.uk/BasicCompanyDataAsOneFile-2026-11-01.zip"),
        ("https://u:p@Download.CompaniesHouse.gov.uk:443/a.zip?token=t&x=1#frag",
         "https://download.companieshouse.gov.uk:443/a.zip"),
        ("https://h/a.zip?", "https://h/a.zip"),
        ("/data/BasicCompanyDataAsOneFile.zip", "/data/BasicCompanyDataAsOneFile.zip"),
    ],
)
def test_how_a_source_is_shown(source: str, shown: str):
    assert bulk_load.redact_source(source) == shown


# --- Size caps, checked before anything is unpacked ------------------------------------------


def test_a_zip_bomb_is_refused_before_extraction(tmp_path: Path):
    bomb = zip_bomb(tmp_path / "BasicCompanyDataAsOneFile-2026-11-01.zip", uncompressed=64 << 20)
    assert bomb.stat().st_size < 1 << 20  # small compressed, 64 MB uncompressed
    with no_file_larger_than(8 << 20), pytest.raises(ValueError, match="compression ratio") as refused:
        load(str(bomb))
    assert "before extracting" in str(refused.value)


def test_a_zip_declaring_more_than_the_cap_is_refused_before_extraction(sample_csv: Path, tmp_path: Path):
    archive = tmp_path / "BasicCompanyDataAsOneFile-2026-11-01.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as z:
        z.write(sample_csv, sample_csv.name)
    declared = zipfile.ZipFile(archive).getinfo(sample_csv.name).file_size
    limits = bulk_load.BulkLimits(max_csv_bytes=declared - 1)
    with no_file_larger_than(declared // 2), pytest.raises(ValueError, match=f"declares {declared:,} bytes"):
        load(str(archive), limits=limits)
    assert load(str(archive), limits=bulk_load.BulkLimits(max_csv_bytes=declared)) == 300


def test_bytes_extracted_are_counted_whatever_the_zip_declares(tmp_path: Path):
    """Declared sizes can lie: the copy out of the archive stops at the cap by itself."""
    import io

    out = tmp_path / "out"
    with out.open("wb") as target, pytest.raises(ValueError, match="more than 1,000 bytes"):
        bulk_load.copy_capped(io.BytesIO(b"x" * 5_000), target, max_bytes=1_000, what="the CSV")
    assert out.stat().st_size <= 1_000 + bulk_load.COPY_CHUNK


def test_a_large_local_csv_is_refused(sample_csv: Path):
    with pytest.raises(ValueError, match="over the limit"):
        load(str(sample_csv), limits=bulk_load.BulkLimits(max_csv_bytes=1_000))


def test_the_download_is_capped_by_content_length_and_while_streaming(https_server, sample_csv: Path):
    (https_server.www / CSV_NAME).write_bytes(sample_csv.read_bytes())
    size = sample_csv.stat().st_size
    with pytest.raises(ValueError, match="Content-Length"):
        load(f"{https_server.base}/{CSV_NAME}", limits=bulk_load.BulkLimits(max_download_bytes=size - 1))
    with no_file_larger_than(4 << 20), pytest.raises(ValueError, match="more than 1,048,576 bytes"):
        load(f"{https_server.base}/unsized/{16 << 20}", limits=bulk_load.BulkLimits(max_download_bytes=1 << 20))


def test_limits_can_only_be_lowered():
    defaults = bulk_load.BulkLimits()
    assert defaults.max_download_bytes == bulk_load.MAX_DOWNLOAD_BYTES
    for field, value in [("max_download_bytes", bulk_load.MAX_DOWNLOAD_BYTES + 1),
                         ("max_csv_bytes", bulk_load.MAX_CSV_BYTES + 1),
                         ("max_compression_ratio", bulk_load.MAX_COMPRESSION_RATIO + 1),
                         ("max_csv_bytes", 0)]:
        with pytest.raises(ValueError, match=field):
            bulk_load.BulkLimits(**{field: value})
