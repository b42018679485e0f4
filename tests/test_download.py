"""`pipelines.download.fetch_movielens` against a real local HTTP server."""

import functools
import hashlib
import http.server
import os
import shutil
import stat
import subprocess
import sys
import threading
import zipfile

import pytest
import rawdata

from pipelines import download, sources


class _CountingHandler(http.server.SimpleHTTPRequestHandler):
    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()

    def log_message(self, *args):
        pass


@pytest.fixture
def server(tmp_path, monkeypatch):
    """Serves tmp_path/www on 127.0.0.1:<free port>; `.requests` lists GET paths."""
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "127.0.0.1,localhost")
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_CountingHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    httpd.requests = []
    httpd.root = root
    httpd.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


def _ml1m_zip(tmp_path, zip_path, extra_members=()):
    """A zip in the official ml-1m layout (ml-1m/{ratings,movies,users}.dat, README)."""
    summary = rawdata.write_ml1m(tmp_path / "fixture", num_users=6, per_user=5)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ml-1m/", b"")
        for name in ("movies.dat", "ratings.dat", "users.dat"):
            archive.write(tmp_path / "fixture" / name, f"ml-1m/{name}")
        archive.writestr("ml-1m/README", b"SUMMARY\n")
        for info, data in extra_members:
            archive.writestr(info, data)
    with open(zip_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return summary, digest


def _fetch(server, cache, sha256, name="ml-1m"):
    return download.fetch_movielens(name, str(cache), url=f"{server.url}/{name}.zip", sha256=sha256)


def test_checksums_are_the_tfds_registered_ones():
    import tensorflow_datasets as tfds

    path = os.path.join(os.path.dirname(tfds.__file__), "url_checksums", "movielens.txt")
    with open(path) as f:
        rows = {line.split("\t")[0]: line.split("\t") for line in f if line.strip()}
    for name, url in download.MOVIELENS_URLS.items():
        assert rows[url][2] == download.MOVIELENS_SHA256[name]
        assert int(rows[url][1]) == download.MOVIELENS_SIZES[name]


def test_download_extract_then_cached(tmp_path, server):
    summary, digest = _ml1m_zip(tmp_path, server.root / "ml-1m.zip")
    cache = tmp_path / "cache"

    got = _fetch(server, cache, digest)

    assert got == str(cache / "ml-1m")
    assert server.requests == ["/ml-1m.zip"]
    assert sorted(os.listdir(got)) == sorted(
        [download.COMPLETE_MARKER, "README", "movies.dat", "ratings.dat", "users.dat"]
    )
    for role, path in sources.resolve_files(sources.get_source("ml-1m"), got).items():
        with open(path, "rb") as f, open(summary["paths"][role], "rb") as g:
            assert f.read() == g.read()
    # Only the archive and the data dir are left: no .part, no partial dirs.
    assert sorted(os.listdir(cache)) == ["ml-1m", "ml-1m.zip"]

    assert _fetch(server, cache, digest) == got
    assert server.requests == ["/ml-1m.zip"]  # second call: no request


def test_wrong_checksum_fails_and_keeps_nothing(tmp_path, server):
    _, digest = _ml1m_zip(tmp_path, server.root / "ml-1m.zip")
    cache = tmp_path / "cache"
    wrong = "0" * 64
    with pytest.raises(download.ChecksumError) as err:
        _fetch(server, cache, wrong)
    message = str(err.value)
    assert f"{server.url}/ml-1m.zip" in message
    assert f"expected sha256 {wrong}" in message
    assert f"got {digest}" in message
    assert os.listdir(cache) == []  # neither archive nor data kept as valid
    # The right checksum then downloads again and succeeds.
    assert os.path.isdir(_fetch(server, cache, digest))
    assert len(server.requests) == 2


def test_corrupt_cached_archive_is_downloaded_again(tmp_path, server):
    _, digest = _ml1m_zip(tmp_path, server.root / "ml-1m.zip")
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "ml-1m.zip").write_bytes(b"truncated")
    (cache / "ml-1m.zip.part").write_bytes(b"left by a killed download")
    got = _fetch(server, cache, digest)
    assert server.requests == ["/ml-1m.zip"]
    assert os.path.isfile(os.path.join(got, "ratings.dat"))


def _symlink_member():
    info = zipfile.ZipInfo("ml-1m/link")
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, b"/etc/passwd"


@pytest.mark.parametrize(
    "member, reason",
    [
        (("../evil", b"x"), "contains '..'"),
        (("ml-1m/../../evil", b"x"), "contains '..'"),
        (("/tmp/bt_tf_abs_evil", b"x"), "is an absolute path"),
        (_symlink_member(), "is a symlink"),
    ],
)
def test_unsafe_zip_is_rejected_and_nothing_escapes(tmp_path, server, member, reason):
    _, digest = _ml1m_zip(tmp_path, server.root / "ml-1m.zip", extra_members=[member])
    cache = tmp_path / "cache"
    before = set(os.listdir(tmp_path))
    with pytest.raises(download.UnsafeArchiveError, match=reason):
        _fetch(server, cache, digest)
    assert set(os.listdir(tmp_path)) == before | {"cache"}
    assert sorted(os.listdir(cache)) == ["ml-1m.zip"]  # no data dir, no partial
    assert not os.path.exists("/tmp/bt_tf_abs_evil")


def test_exception_mid_extract_leaves_nothing_complete(tmp_path, server, monkeypatch):
    _, digest = _ml1m_zip(tmp_path, server.root / "ml-1m.zip")
    cache = tmp_path / "cache"
    calls = []
    real_copy = shutil.copyfileobj

    def failing_copy(src, dst, length=0):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("disk full (simulated)")
        return real_copy(src, dst, length)

    monkeypatch.setattr(shutil, "copyfileobj", failing_copy)
    with pytest.raises(OSError, match="simulated"):
        _fetch(server, cache, digest)
    assert sorted(os.listdir(cache)) == ["ml-1m.zip"]
    monkeypatch.undo()
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    assert os.path.isfile(os.path.join(_fetch(server, cache, digest), "users.dat"))
    assert server.requests == ["/ml-1m.zip"]  # the archive was reused


_KILL_MID_EXTRACT = """
import os, shutil, signal, sys
from pipelines import download
real_copy, calls = shutil.copyfileobj, []
def copy_then_die(src, dst, length=0):
    calls.append(1)
    if len(calls) == 3:
        os.kill(os.getpid(), signal.SIGKILL)
    return real_copy(src, dst, length)
shutil.copyfileobj = copy_then_die
download.fetch_movielens("ml-1m", sys.argv[1], url="http://unused.invalid/x.zip",
                         sha256=sys.argv[2])
"""


def test_killed_extraction_does_not_look_complete_and_rerun_completes(tmp_path, server):
    summary, digest = _ml1m_zip(tmp_path, server.root / "ml-1m.zip")
    cache = tmp_path / "cache"
    cache.mkdir()
    shutil.copy(server.root / "ml-1m.zip", cache / "ml-1m.zip")  # already downloaded

    proc = subprocess.run(
        [sys.executable, "-c", _KILL_MID_EXTRACT, str(cache), digest],
        cwd=os.path.dirname(os.path.dirname(download.__file__)),
        capture_output=True,
        timeout=120,
        check=False,  # the return code is asserted below
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    left = sorted(os.listdir(cache))
    assert left[0].startswith(".ml-1m.partial-") and left[1:] == ["ml-1m.zip"]
    sizes = {
        f: os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(cache / left[0]) for f in fs
    }
    # Members in zip order: movies.dat and ratings.dat written, killed while
    # copying users.dat (opened, 0 bytes).
    assert sizes["users.dat"] == 0 and sizes["movies.dat"] > 0 and len(sizes) == 3
    assert not os.path.exists(cache / "ml-1m")

    got = _fetch(server, cache, digest)
    assert sorted(os.listdir(cache)) == ["ml-1m", "ml-1m.zip"]  # stale partial gone
    assert server.requests == []
    with open(os.path.join(got, "ratings.dat"), "rb") as f:
        assert f.read().count(b"\n") == len(summary["interactions"])


def test_incomplete_target_dir_is_replaced(tmp_path, server):
    _, digest = _ml1m_zip(tmp_path, server.root / "ml-1m.zip")
    cache = tmp_path / "cache"
    (cache / "ml-1m").mkdir(parents=True)
    (cache / "ml-1m" / "ratings.dat").write_bytes(b"1::1::5::")  # half-written
    got = _fetch(server, cache, digest)
    assert os.path.getsize(os.path.join(got, "ratings.dat")) > 100
    assert os.path.isfile(os.path.join(got, download.COMPLETE_MARKER))


def test_unknown_name_without_url():
    with pytest.raises(
        ValueError, match="no download URL for 'ml-25m'; known: ml-100k, ml-1m, ml-20m"
    ):
        download.fetch_movielens("ml-25m", "/nonexistent")


def _ml100k_zip(tmp_path, zip_path):
    """A zip in the official ml-100k layout: ml-100k/u.* plus the u1-u5/ua/ub splits."""
    summary = rawdata.write_ml100k(tmp_path / "fixture100k", num_users=6, per_user=5)
    with zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("ml-100k/", b"")
        for name in ("u.data", "u.genre", "u.item", "u.user"):
            archive.write(tmp_path / "fixture100k" / name, f"ml-100k/{name}")
        archive.writestr("ml-100k/u.info", b"943 users\n1682 items\n100000 ratings\n")
        archive.writestr("ml-100k/u.occupation", b"administrator\nartist\n")
        for split in ("u1.base", "u1.test", "ua.base", "ua.test"):
            archive.writestr(f"ml-100k/{split}", b"1\t1\t5\t874965758\n")
        archive.writestr("ml-100k/README", b"SUMMARY\n")
        archive.writestr("ml-100k/mku.sh", b"#!/bin/sh\n")
    with open(zip_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    return summary, digest


def test_ml100k_download_extract_then_cached(tmp_path, server):
    summary, digest = _ml100k_zip(tmp_path, server.root / "ml-100k.zip")
    cache = tmp_path / "cache"

    got = _fetch(server, cache, digest, name="ml-100k")

    assert got == str(cache / "ml-100k")
    assert server.requests == ["/ml-100k.zip"]
    assert os.path.isfile(os.path.join(got, download.COMPLETE_MARKER))
    files = sources.resolve_files(sources.get_source("ml-100k"), got)
    assert files == {
        role: os.path.join(got, os.path.basename(path)) for role, path in summary["paths"].items()
    }
    for role, path in files.items():
        with open(path, "rb") as f, open(summary["paths"][role], "rb") as g:
            assert f.read() == g.read()
    assert sorted(os.listdir(cache)) == ["ml-100k", "ml-100k.zip"]
    assert _fetch(server, cache, digest, name="ml-100k") == got
    assert server.requests == ["/ml-100k.zip"]  # second call: no request

    with pytest.raises(download.ChecksumError, match="expected sha256 0000"):
        _fetch(server, tmp_path / "cache2", "0" * 64, name="ml-100k")
