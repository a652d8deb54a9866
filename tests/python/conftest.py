"""Starts one `rapport serve` (all five services) for the whole Python suite and gives tests stubs.

The server runs on embedded storage in a temporary directory, or on a fresh PostgreSQL database (created
here, dropped afterwards) when RAPPORT_TEST_DATABASE_URL is set, with Redis when RAPPORT_TEST_REDIS_URL
is set. Ports are chosen by the server (port 0) and read from the line it prints.
"""

import hashlib
import os
import re
import shutil
import socket
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


SERVICES = ["identity", "consent", "profile", "decision", "delivery"]


class Suite:
    """One running deployment: all services in one process, or each service in its own process."""

    def __init__(self, mode, grpc_addrs, http_addrs, token):
        self.mode = mode
        self.grpc_addrs = grpc_addrs
        self.http_addrs = http_addrs
        self.token = token
        self._channels = {}

    def channel_for(self, service):
        """A channel to the process serving `service`."""
        addr = self.grpc_addrs[service]
        if addr not in self._channels:
            self._channels[addr] = grpc.insecure_channel(addr)
        return self._channels[addr]

    def http_url(self, service):
        return f"http://{self.http_addrs[service]}"

    def md(self, token=None):
        """Call metadata carrying `token` (the admin token by default)."""
        return (("authorization", f"Bearer {token or self.token}"),)

    def close(self):
        for ch in self._channels.values():
            ch.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Process:
    """A `rapport serve` child process and what it printed."""

    def __init__(self, args, env):
        self.proc = subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.lines = []
        self.addrs = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line)
            m = re.search(r"on grpc (\S+) and http (\S+)", line)
            if m:
                self.addrs["grpc"], self.addrs["http"] = m.group(1), m.group(2)

    def wait_ready(self, deadline):
        while "http" not in self.addrs:
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("rapport serve did not start:\n" + "".join(self.lines))
            time.sleep(0.05)
        while True:
            try:
                with urllib.request.urlopen(f"http://{self.addrs['http']}/readyz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.time() > deadline:
                self.stop()
                raise RuntimeError("rapport never became ready:\n" + "".join(self.lines))
            time.sleep(0.1)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


@pytest.fixture(scope="session", params=["all-in-one", "split"])
def suite(request):
    """The whole suite, once in one process and once as five processes calling each other over gRPC."""
    mode = request.param
    binary = os.environ.get("RAPPORT_BIN")
    assert binary and os.path.exists(binary), "RAPPORT_BIN must name the rapport binary (run.sh sets it)"
    data_dir = tempfile.mkdtemp(prefix=f"rapport-py-{mode}-")
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
    common_args = ["serve", "--config", config, "--data-dir", data_dir]
    processes = []
    deadline = time.time() + 90
    try:
        if mode == "all-in-one":
            p = Process([binary, *common_args, "--grpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"], env)
            processes.append(p)
            p.wait_ready(deadline)
            grpc_addrs = {s: p.addrs["grpc"] for s in SERVICES}
            http_addrs = {s: p.addrs["http"] for s in SERVICES}
        else:
            grpc_addrs = {s: f"127.0.0.1:{_free_port()}" for s in SERVICES}
            http_addrs = {s: f"127.0.0.1:{_free_port()}" for s in SERVICES}
            split_env = dict(env)
            for s in SERVICES:
                split_env[f"RAPPORT__CLIENTS__{s.upper()}"] = f"http://{grpc_addrs[s]}"
            # Identity first: it creates the shared admin token the others use to call each other.
            for s in SERVICES:
                own = dict(split_env)
                del own[f"RAPPORT__CLIENTS__{s.upper()}"]
                p = Process([binary, *common_args, "--services", s,
                             "--grpc-listen", grpc_addrs[s], "--http-listen", http_addrs[s]], own)
                processes.append(p)
                if s == "identity":
                    p.wait_ready(deadline)
            for p in processes:
                p.wait_ready(deadline)
        with open(os.path.join(data_dir, "admin.token")) as f:
            token = f.read().strip()
        s = Suite(mode, grpc_addrs, http_addrs, token)
        yield s
        s.close()
    finally:
        for p in reversed(processes):
            p.stop()
        if drop:
            drop()
        shutil.rmtree(data_dir, ignore_errors=True)


def unique_email(prefix="py"):
    return f"{prefix}.{uuid.uuid4().hex[:10]}@example.com"


def unique_phone():
    # A valid German mobile number in E.164, unique enough per run.
    return "+49151" + str(uuid.uuid4().int)[:8]
