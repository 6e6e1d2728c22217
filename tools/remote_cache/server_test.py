"""server.sh and nginx.conf.in with real nginx on loopback: Bazel's GET/PUT work, nothing else does,
and only the writer's credential can PUT."""

import base64
import hashlib
import os
import shutil
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

SERVER = Path("tools/remote_cache/server.sh")

# A test never installs packages: tools/bazel installs Debian's nginx before any test runs. Without
# it this is a failure naming the fix, never a skip (a module-level skip made pytest exit 5).
NGINX_MISSING = shutil.which("nginx") is None and not os.access("/usr/sbin/nginx", os.X_OK)


def test_nginx_is_installed():
    assert not NGINX_MISSING, "nginx is not installed: run the tests through tools/bazel, which installs Debian's nginx"


WRITER = "ci:correct-horse-battery"


def server(*args, writer=WRITER):
    env = {k: v for k, v in os.environ.items() if k != "TINYQ_CACHE_WRITER"}
    if writer:
        env["TINYQ_CACHE_WRITER"] = writer
    return subprocess.run(["bash", str(SERVER), *map(str, args)], capture_output=True, text=True, timeout=60, env=env)


def request(method, url, body=None, auth=WRITER):
    headers = {"Authorization": "Basic " + base64.b64encode(auth.encode()).decode()} if auth else {}
    req = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, b""


@pytest.fixture
def cache(tmp_path):
    store, state = tmp_path / "store", tmp_path / "state"
    r = server("start", "--port", "auto", "--store", store, "--state", state, "--max-body", "1k")
    assert r.returncode == 0, r.stderr
    url = r.stdout.strip()
    assert url.startswith("http://127.0.0.1:")
    yield url, store, state
    server("stop", "--state", state)


def test_bazel_puts_and_gets_blobs_by_digest(cache):
    url, store, _ = cache
    blob = b"an int8 model"
    digest = hashlib.sha256(blob).hexdigest()
    assert request("GET", f"{url}/cas/{digest}")[0] == 404
    assert request("PUT", f"{url}/cas/{digest}", blob)[0] == 201
    assert request("GET", f"{url}/cas/{digest}") == (200, blob)
    assert request("HEAD", f"{url}/cas/{digest}")[0] == 200
    assert request("PUT", f"{url}/ac/{digest}", b"result")[0] == 201  # create_full_put_path made ac/
    assert (store / "cas" / digest).read_bytes() == blob
    assert request("PUT", f"{url}/cas/{digest}", blob)[0] == 204  # a writer may overwrite


def test_only_ac_and_cas_digests_and_only_get_head_put(cache):
    url, store, _ = cache
    digest = "0" * 64
    assert request("PUT", f"{url}/other/{digest}", b"x")[0] == 404
    assert request("PUT", f"{url}/cas/not-a-digest", b"x")[0] == 404
    assert request("PUT", f"{url}/cas/{digest}/x", b"x")[0] == 404
    assert request("PUT", f"{url}/cas/{digest}", b"x")[0] == 201
    assert request("DELETE", f"{url}/cas/{digest}")[0] == 403
    assert request("MKCOL", f"{url}/cas/{'1' * 64}")[0] == 403
    assert (store / "cas" / digest).exists()
    assert sorted(p.name for p in store.iterdir()) == [".tmp", "cas"]


def test_a_body_over_the_limit_is_refused(cache):
    url, store, _ = cache
    assert request("PUT", f"{url}/cas/{'2' * 64}", b"x" * 2048)[0] == 413
    assert not (store / "cas" / ("2" * 64)).exists()


def test_status_and_stop(cache):
    url, _, state = cache
    r = server("status", "--state", state)
    assert r.returncode == 0 and r.stdout.strip() == url
    assert server("stop", "--state", state).returncode == 0
    assert server("status", "--state", state).returncode == 1
    assert server("stop", "--state", state).returncode == 0  # stopping twice is fine
    with pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"{url}/cas/{'0' * 64}", timeout=5)


@pytest.mark.parametrize(
    "args",
    [
        ["restart"],
        ["start", "--port", "70000"],
        ["start", "--max-body", "lots"],
        ["start", "--store", "/tmp/a b"],
        ["start", "--bogus", "x"],
        ["start", "--port"],
    ],
)
def test_bad_usage_is_exit_code_2_with_a_message(args, tmp_path):
    r = server(args[0], "--state", tmp_path / "state", *args[1:])
    assert r.returncode == 2 and r.stderr.startswith("remote_cache: ")


def test_a_write_without_the_writers_credential_is_refused(cache):
    """Any local process could PUT an action-cache entry and poison every reader: not any more."""
    url, store, state = cache
    digest = hashlib.sha256(b"poison").hexdigest()
    for auth in (None, "ci:wrong-password", "mallory:correct-horse-battery"):
        assert request("PUT", f"{url}/ac/{digest}", b"poison", auth=auth)[0] == 401
    assert not (store / "ac").exists()
    assert request("GET", f"{url}/ac/{digest}", auth=None)[0] == 404  # reading needs no credential
    assert "correct-horse-battery" not in (state / "writers.htpasswd").read_text()  # hashed, never stored plain


def test_without_a_writer_the_cache_is_read_only(tmp_path):
    store, state = tmp_path / "store", tmp_path / "state"
    r = server("start", "--port", "auto", "--store", store, "--state", state, writer=None)
    try:
        assert r.returncode == 0 and "read-only" in r.stderr, r.stderr
        url = r.stdout.strip()
        assert request("PUT", f"{url}/cas/{'3' * 64}", b"x")[0] == 401
    finally:
        server("stop", "--state", state)
    bad = server("start", "--port", "auto", "--store", store, "--state", state, writer="no-password-here")
    assert bad.returncode == 2 and "TINYQ_CACHE_WRITER must be user:password" in bad.stderr
