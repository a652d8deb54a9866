"""Starts one `rapport serve` (all five services) for the whole Python suite and gives tests stubs.

The server runs on embedded storage in a temporary directory, or on a fresh PostgreSQL database (created
here, dropped afterwards) when RAPPORT_TEST_DATABASE_URL is set, with Redis when RAPPORT_TEST_REDIS_URL
is set. Ports are chosen by the server (port 0) and read from the line it prints.
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid

import grpc
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "gen"))

# A token holding only profile:read, to check PERMISSION_DENIED (its sha256 goes into the config).
READ_ONLY_TOKEN = "py-read-only-" + uuid.uuid4().hex


def _fresh_postgres(url):
    """A URL of a new, empty database next to the one in `url`, and a function that drops it."""
    name = "rapport_py_" + uuid.uuid4().hex[:12]
    base, _, _ = url.rpartition("/")
    subprocess.run(["psql", url, "-qAtc", f"CREATE DATABASE {name}"], check=True)

    def drop():
        subprocess.run(["psql", url, "-qAtc", f"DROP DATABASE IF EXISTS {name} WITH (FORCE)"], check=False)

    return f"{base}/{name}", drop


class Suite:
    def __init__(self, grpc_addr, http_addr, token):
        self.grpc_addr = grpc_addr
        self.http_url = f"http://{http_addr}"
        self.token = token
        self.channel = grpc.insecure_channel(grpc_addr)

    def md(self, token=None):
        """Call metadata carrying `token` (the admin token by default)."""
        return (("authorization", f"Bearer {token or self.token}"),)


@pytest.fixture(scope="session")
def suite():
    binary = os.environ.get("RAPPORT_BIN")
    assert binary and os.path.exists(binary), "RAPPORT_BIN must name the rapport binary (run.sh sets it)"
    data_dir = tempfile.mkdtemp(prefix="rapport-py-")
    env = dict(os.environ)
    env["RAPPORT__TELEMETRY__LOG_FILTER"] = "warn"
    read_only_hash = hashlib.sha256(READ_ONLY_TOKEN.encode()).hexdigest()
    config = os.path.join(data_dir, "config.toml")
    with open(config, "w") as f:
        f.write(
            "[[auth.api_keys]]\n"
            'name = "py-read-only"\n'
            f'sha256 = "{read_only_hash}"\n'
            'scopes = ["profile:read"]\n'
        )
    drop = None
    if os.environ.get("RAPPORT_TEST_DATABASE_URL"):
        url, drop = _fresh_postgres(os.environ["RAPPORT_TEST_DATABASE_URL"])
        env["RAPPORT__STORAGE__URL"] = url
    if os.environ.get("RAPPORT_TEST_REDIS_URL"):
        env["RAPPORT__CACHE__URL"] = os.environ["RAPPORT_TEST_REDIS_URL"]
    proc = subprocess.Popen(
        [binary, "serve", "--config", config, "--data-dir", data_dir,
         "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    lines = []
    found = {}

    def read_output():
        for line in proc.stdout:
            lines.append(line)
            m = re.search(r"on grpc (\S+) and http (\S+)", line)
            if m:
                found["grpc"], found["http"] = m.group(1), m.group(2)

    threading.Thread(target=read_output, daemon=True).start()
    deadline = time.time() + 60
    while "http" not in found:
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError("rapport serve did not start:\n" + "".join(lines))
        time.sleep(0.05)
    while True:
        try:
            with urllib.request.urlopen(f"http://{found['http']}/readyz", timeout=2) as r:
                if r.status == 200:
                    break
        except OSError:
            pass
        if time.time() > deadline:
            proc.kill()
            raise RuntimeError("rapport never became ready:\n" + "".join(lines))
        time.sleep(0.1)
    with open(os.path.join(data_dir, "admin.token")) as f:
        token = f.read().strip()
    s = Suite(found["grpc"], found["http"], token)
    try:
        yield s
    finally:
        s.channel.close()
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
        if drop:
            drop()
        shutil.rmtree(data_dir, ignore_errors=True)


def unique_email(prefix="py"):
    return f"{prefix}.{uuid.uuid4().hex[:10]}@example.com"


def unique_phone():
    # A valid German mobile number in E.164, unique enough per run.
    return "+49151" + str(uuid.uuid4().int)[:8]
