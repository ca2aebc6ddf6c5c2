#!/usr/bin/env python3
"""stategate's benchmarks, each against a baseline measured in the same run.

Run it as `bench/run` (see bench/README.md for what every row means):

    bench/run                      # release build, every store, full sizes
    bench/run --quick              # tiny sizes, about two minutes (CI)
    bench/run --stores local,sqlite --no-build
    bench/run --binary target/debug/stategate --quick

Every server runs on 127.0.0.1 in a temporary directory of its own and is
stopped when the run ends, however it ends. The table goes to stdout and,
as JSON, to target/bench/results.json.
"""

import argparse
import hashlib
import atexit
import http.client
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PEERS = REPO / "tests" / "peers"
NGINX = "/usr/sbin/nginx"
ALL_STORES = ["local", "sqlite", "s3", "oss", "postgres", "mariadb", "db"]
# Stores served by stategate's `db` storage type.
DB_STORES = ("postgres", "mariadb", "db")
# Stores whose data goes to the disk here, where the file loop is the floor.
DISK_STORES = ("local", "sqlite")
# The stores whose layout the listing rows write straight into.
LISTING_STORES = ("local", "sqlite", "s3")

OSS_ENDPOINT = "oss-test.invalid"
OSS_REGION = "cn-beijing"
OSS_AK = "LTAI-stategate-bench"
OSS_SECRET = "bench-secret"


def log(message):
    print(message, file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# Processes and temporary directories, all released at exit.

PROCS = []
TEMP_DIRS = []


def temp_dir(name):
    path = Path(tempfile.mkdtemp(prefix=f"stategate-bench-{name}-"))
    TEMP_DIRS.append(path)
    return path


def spawn(args, **kwargs):
    """Starts a process in a session of its own (so its children, such as
    nginx's workers, are stopped with it)."""
    kwargs.setdefault("stdin", subprocess.DEVNULL)
    kwargs.setdefault("stdout", subprocess.DEVNULL)
    kwargs.setdefault("stderr", subprocess.DEVNULL)
    proc = subprocess.Popen(args, start_new_session=True, **kwargs)
    PROCS.append(proc)
    return proc


def stop(proc, grace=5.0):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream:
            try:
                stream.close()
            except OSError:
                pass
    if proc in PROCS:
        PROCS.remove(proc)


def cleanup():
    for proc in list(reversed(PROCS)):
        stop(proc, grace=2.0)
    if TEMP_DIRS:
        log("removing the temporary directories")
    for path in TEMP_DIRS:
        shutil.rmtree(path, ignore_errors=True)
    TEMP_DIRS.clear()


def on_signal(signum, _frame):
    raise SystemExit(128 + signum)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------
# HTTP helpers.


def request(method, url, body=None, headers=None, timeout=600):
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        path = parts.path + (f"?{parts.query}" if parts.query else "")
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def state_body(size, serial=1, lineage="bench"):
    """A Terraform state of exactly `size` bytes (at least ~120)."""
    head = (
        '{"version":4,"terraform_version":"1.9.0","serial":%d,"lineage":"%s",'
        '"outputs":{"blob":{"type":"string","value":"' % (serial, lineage)
    ).encode()
    tail = b'"}},"resources":[]}\n'
    fill = max(0, size - len(head) - len(tail))
    return head + b"x" * fill + tail


def streamed_state(size, chunk=1 << 20):
    """The same bytes as state_body(size), produced in chunks so that a
    client sending hundreds of MiB does not hold them."""
    whole = state_body(200)
    head = whole[: whole.index(b"xxxxxxxx")]
    tail = whole[whole.rindex(b"xxxxxxxx") + 8 :]
    fill = size - len(head) - len(tail)
    block = b"x" * chunk

    def gen():
        yield head
        left = fill
        while left > 0:
            n = min(left, chunk)
            yield block if n == chunk else block[:n]
            left -= n
        yield tail

    return gen()


# --------------------------------------------------------------------------
# Peers: moto (S3), the OSS test server, nginx, the protocol stub.


class Moto:
    def __init__(self):
        self.proc = spawn(
            [sys.executable, str(PEERS / "moto_server.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline().decode()
        try:
            ready = json.loads(line)
        except ValueError:
            raise RuntimeError(f"moto did not start ({line!r}); install tests/peers/requirements.txt into .venv")
        self.endpoint = f"http://127.0.0.1:{ready['port']}"
        self.access_key = ready["access_key"]
        self.secret_key = ready["secret_key"]
        self.count = 0

    def command(self, line):
        """Sends a control command (see moto_server.py); returns its answer."""
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()
        return self.proc.stdout.readline().decode().strip()

    def lists(self):
        """Object listings (ListObjects pages) served so far."""
        return int(self.command("lists"))

    def bucket_lists(self, bucket):
        """Object listings of `bucket` served so far, whatever other
        buckets were listed meanwhile."""
        return int(self.command(f"lists {bucket}"))

    def env(self):
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_REGION": "us-east-1",
        }

    def new_bucket(self):
        self.count += 1
        name = f"bench-{os.getpid()}-{self.count}"
        status, body = request("PUT", f"{self.endpoint}/{name}")
        if status != 200:
            raise RuntimeError(f"moto create bucket: {status} {body[:200]!r}")
        return name


class OssServer:
    def __init__(self):
        self.proc = spawn(
            [
                sys.executable,
                str(PEERS / "oss_server.py"),
                "--endpoint", OSS_ENDPOINT,
                "--region", OSS_REGION,
                "--credential", f"{OSS_AK}:{OSS_SECRET}",
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the OSS test server did not start: {line!r}")
        self.addr = line.split("listening on ", 1)[1].strip()
        self.count = 0

    def new_bucket(self):
        self.count += 1
        name = f"bench-{os.getpid()}-{self.count}"
        status, body = request("POST", f"http://{self.addr}/-/buckets?name={name}")
        if status != 200:
            raise RuntimeError(f"OSS create bucket: {status} {body[:200]!r}")
        return name


class Stub:
    def __init__(self):
        self.proc = spawn(
            [sys.executable, str(REPO / "bench" / "stub.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )
        line = self.proc.stdout.readline().decode()
        if not line.startswith("listening on "):
            raise RuntimeError(f"the stub did not start: {line!r}")
        self.url = "http://" + line.split("listening on ", 1)[1].strip()


class Nginx:
    """Debian's nginx serving one directory statically, with as many
    workers as cores and its default access log."""

    def __init__(self, workers):
        last = ""
        for _ in range(5):
            self.dir = temp_dir("nginx")
            self.root = self.dir / "www"
            self.root.mkdir()
            # Workers started by root run as an unprivileged user: let them read.
            self.dir.chmod(0o755)
            self.root.chmod(0o755)
            port = free_port()
            d = self.dir
            conf = d / "nginx.conf"
            conf.write_text(
                f"""
worker_processes {workers};
events {{ worker_connections 4096; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    sendfile on;
    tcp_nopush on;
    default_type application/json;
    server {{
        listen 127.0.0.1:{port};
        root {self.root};
        location / {{ }}
        # A POST of a state answered with no work at all: the ceiling of
        # the benchmark's own clients.
        location /states/ {{ return 200 "{{}}"; }}
    }}
}}
"""
            )
            error_log = d / "error.log"
            globals_ = f"daemon off; pid {d}/nginx.pid; error_log {error_log} warn;"
            self.proc = spawn(
                [NGINX, "-p", str(d), "-e", str(error_log), "-c", str(conf), "-g", globals_]
            )
            deadline = time.time() + 20
            while time.time() < deadline:
                if self.proc.poll() is not None:
                    break
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    self.url = f"http://127.0.0.1:{port}"
                    return
                except OSError:
                    time.sleep(0.02)
            last = error_log.read_text() if error_log.exists() else ""
            stop(self.proc)
        raise RuntimeError(f"nginx did not start:\n{last}")


class PrivateDb:
    """A private PostgreSQL or MariaDB server in a temporary directory, on a
    free port of 127.0.0.1, with its durability defaults (fsync on), as the
    test suite runs them (tests/helpers/db.rs)."""

    USER = "stategate"
    PASSWORD = "bench-password"

    def __init__(self, engine):
        self.engine = engine
        self.dir = temp_dir(engine)
        self.run_dir = self.dir / "run"
        self.run_dir.mkdir()
        self.data = self.dir / "data"
        self.port = free_port()
        self.count = 0
        log_file = open(self.dir / "server.log", "wb")
        if engine == "postgres":
            bins = sorted(
                p / "bin" for p in Path("/usr/lib/postgresql").glob("*")
                if (p / "bin" / "postgres").exists() and (p / "bin" / "initdb").exists()
            )
            if not bins:
                raise RuntimeError("no PostgreSQL server under /usr/lib/postgresql/*/bin (Debian's postgresql)")
            bin_dir = bins[-1]
            as_user = {}
            if os.geteuid() == 0:
                # initdb and postgres refuse to run as root.
                subprocess.run(["chown", "-R", "postgres:postgres", str(self.dir)], check=True)
                as_user = {"user": "postgres", "group": "postgres"}
            subprocess.run(
                [str(bin_dir / "initdb"), "-D", str(self.data), "-U", "postgres", "-E", "UTF8",
                 "--locale=C", "--auth-local=trust", "--auth-host=scram-sha-256"],
                check=True, capture_output=True, **as_user,
            )
            self.proc = spawn(
                [str(bin_dir / "postgres"), "-D", str(self.data), "-p", str(self.port),
                 "-k", str(self.run_dir), "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300"],
                stdout=log_file, stderr=log_file, **as_user,
            )
        else:
            mariadbd = next((p for p in ("/usr/sbin/mariadbd", "/usr/sbin/mysqld") if Path(p).exists()), None)
            if not mariadbd or not shutil.which("mariadb-install-db"):
                raise RuntimeError("no MariaDB server (Debian's mariadb-server)")
            subprocess.run(
                ["mariadb-install-db", "--no-defaults", f"--datadir={self.data}", "--user=root",
                 "--auth-root-authentication-method=normal", "--skip-test-db"],
                check=True, capture_output=True,
            )
            self.proc = spawn(
                [mariadbd, "--no-defaults", f"--datadir={self.data}",
                 f"--socket={self.run_dir / 'mariadb.sock'}", f"--pid-file={self.run_dir / 'mariadb.pid'}",
                 f"--port={self.port}", "--user=root", "--bind-address=127.0.0.1",
                 "--skip-name-resolve", "--max-connections=300"],
                stdout=log_file, stderr=log_file,
            )
        log_file.close()
        deadline = time.time() + 60
        while True:
            ok, out = self.sql("SELECT 1")
            if ok:
                break
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"the {engine} server did not start:\n{(self.dir / 'server.log').read_text()[-1500:]}")
            time.sleep(0.1)
        if engine == "postgres":
            ok, out = self.sql(f"CREATE ROLE {self.USER} LOGIN PASSWORD '{self.PASSWORD}'")
        else:
            ok, out = self.sql(f"CREATE USER '{self.USER}'@'%' IDENTIFIED BY '{self.PASSWORD}'")
        if not ok:
            raise RuntimeError(f"creating the login on {engine}: {out}")

    def sql(self, sql, database=None):
        if self.engine == "postgres":
            cmd = ["psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h", str(self.run_dir),
                   "-p", str(self.port), "-U", "postgres", "-d", database or "postgres"]
        else:
            cmd = ["mariadb", "--no-defaults", f"--socket={self.run_dir / 'mariadb.sock'}", "-u", "root",
                   "--batch", "--skip-column-names"] + ([database] if database else [])
        try:
            out = subprocess.run(cmd, input=sql, capture_output=True, text=True, timeout=30)
        except (OSError, subprocess.TimeoutExpired) as e:
            return False, str(e)
        return out.returncode == 0, out.stdout + out.stderr

    def new_database(self):
        self.count += 1
        name = f"bench_{os.getpid()}_{self.count}"
        if self.engine == "postgres":
            sql = f"CREATE DATABASE {name} OWNER {self.USER}"
        else:
            sql = f"CREATE DATABASE {name}; GRANT ALL PRIVILEGES ON {name}.* TO '{self.USER}'@'%'"
        ok, out = self.sql(sql)
        if not ok:
            raise RuntimeError(f"creating a database on {self.engine}: {out}")
        return name


# --------------------------------------------------------------------------
# stategate, on each store.


class Stores:
    """Knows how to point a stategate process at each store."""

    def __init__(self, args, binary):
        self.args = args
        self.moto = None
        self.oss = None
        self.dbs = {}
        self.has_db = None
        self.binary = binary

    def peer(self, store):
        if store in DB_STORES:
            if self.has_db is None:
                # A binary without the db store names it unknown at once.
                try:
                    out = subprocess.run(
                        [self.binary, "check", "--storage-type", "db", "-C", "dbHost=127.0.0.1", "-C", "dbPort=9"],
                        capture_output=True, text=True, timeout=20, cwd=temp_dir("db-check"),
                        env=Stategate.environment({}), stdin=subprocess.DEVNULL,
                    )
                    self.has_db = "unknown storage type" not in out.stdout + out.stderr
                except subprocess.TimeoutExpired:
                    self.has_db = True
            if not self.has_db:
                raise RuntimeError("this binary has no db store")
        if store == "s3" and self.moto is None:
            self.moto = Moto()
        if store == "oss" and self.oss is None:
            self.oss = OssServer()
        if store in ("postgres", "mariadb") and store not in self.dbs:
            self.dbs[store] = PrivateDb(store)

    def settings(self, store, work):
        """(-C settings, environment) for a fresh store under `work`."""
        env = {}
        if store == "local":
            settings = {"path": str(work / "data")}
        elif store == "sqlite":
            settings = {"path": str(work / "stategate.db")}
        elif store == "s3":
            settings = {
                "endpoint": self.moto.endpoint,
                "bucket": self.moto.new_bucket(),
                "region": "us-east-1",
            }
            env = self.moto.env()
        elif store == "oss":
            settings = {
                "bucket": self.oss.new_bucket(),
                "endpoint": f"http://{OSS_ENDPOINT}",
                "region": OSS_REGION,
                "accessKeyID": OSS_AK,
                "accessKeySecret": OSS_SECRET,
            }
            proxy = f"http://{self.oss.addr}"
            env = {"HTTP_PROXY": proxy, "http_proxy": proxy, "NO_PROXY": "", "no_proxy": ""}
        elif store == "db":
            settings = {"dbURL": self.args.db_url}
        elif store in ("postgres", "mariadb"):
            db = self.dbs[store]
            settings = {
                "dbType": "postgres" if store == "postgres" else "mysql",
                "dbHost": "127.0.0.1",
                "dbPort": str(db.port),
                "dbName": db.new_database(),
                "dbUser": db.USER,
                "dbSSLMode": "disable",
            }
            env = {"STATEGATE_DB_PASSWORD": db.PASSWORD}
        else:
            raise ValueError(store)
        return settings, env


class Stategate:
    def __init__(self, binary, stores, store, extra=(), work=None, port=0, env=None):
        """`extra`: more command-line arguments; `env`: more environment
        (settings that have no flag, such as STATEGATE_HISTORY_KEEP)."""
        self.store = store
        self.work = work or temp_dir(f"sg-{store}")
        settings, store_env = stores.settings(store, self.work)
        env = {**store_env, **(env or {})}
        self.settings_env = (settings, env)
        self.cmd = self.command(binary, store, settings, port, extra)
        self.env = self.environment(env)
        self.log_path = self.work / f"stategate-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log_file:
            self.proc = spawn(self.cmd, cwd=self.work, env=self.env, stderr=log_file)
        self.url = self._wait_listening()

    @staticmethod
    def command(binary, store, settings, port, extra):
        kind = "db" if store in DB_STORES else store
        cmd = [binary, "serve", "--listen", f"127.0.0.1:{port}", "--storage-type", kind]
        for key, value in settings.items():
            cmd += ["-C", f"{key}={value}"]
        return cmd + list(extra)

    @staticmethod
    def environment(extra):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STATEGATE_")}
        env.pop("RUST_LOG", None)
        for key in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(key, None)
        env.update(extra)
        return env

    def _wait_listening(self):
        deadline = time.time() + 120
        while time.time() < deadline:
            text = self.log_path.read_text(errors="replace")
            m = re.search(r"listening on http://(\S+)", text)
            if m:
                return f"http://{m.group(1)}"
            if self.proc.poll() is not None:
                break
            time.sleep(0.01)
        stop(self.proc)
        raise RuntimeError(f"stategate on {self.store} did not start:\n{self.log_path.read_text(errors='replace')[-2000:]}")

    def restart(self):
        """Stops the process and starts it again on the same store."""
        stop(self.proc)
        self.log_path = self.work / f"stategate-{time.monotonic_ns()}.log"
        with open(self.log_path, "wb") as log_file:
            self.proc = spawn(self.cmd, cwd=self.work, env=self.env, stderr=log_file)
        self.url = self._wait_listening()

    def status(self, field):
        """VmRSS or VmHWM of the process, in MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
        raise RuntimeError(f"no {field}")

    def stop(self):
        stop(self.proc)


# --------------------------------------------------------------------------
# Measurements.


def cpu_seconds(pid):
    """The processor time process `pid` has used: (user, system)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def median(values):
    return statistics.median(values) if values else None


def terraform_env(home, extra=None):
    rc = home / ".terraformrc"
    rc.touch()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("TF_", "AWS_"))}
    for key in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy"):
        env.pop(key, None)
    env.update(
        {
            "TF_IN_AUTOMATION": "1",
            "TF_INPUT": "0",
            "CHECKPOINT_DISABLE": "1",
            "TF_CLI_CONFIG_FILE": str(rc),
        }
    )
    env.update(extra or {})
    return env


class TerraformConfig:
    def __init__(self, name, backend_hcl, resources, env=None):
        self.name = name
        self.dir = temp_dir("tf")
        (self.dir / "main.tf").write_text(
            f"""terraform {{
{backend_hcl}
}}

resource "terraform_data" "r" {{
  count = {resources}
  input = "resource ${{count.index}}"
}}
"""
        )
        self.env = terraform_env(self.dir, env)
        self.times = []
        self.run("init", "-no-color")

    def run(self, *args):
        out = subprocess.run(
            ["terraform", *args],
            cwd=self.dir,
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
        )
        if out.returncode != 0:
            raise RuntimeError(
                f"terraform {' '.join(args)} ({self.name}) failed:\n"
                f"{out.stdout.decode()[-2000:]}{out.stderr.decode()[-2000:]}"
            )

    def apply_destroy(self):
        started = time.perf_counter()
        self.run("apply", "-auto-approve", "-no-color")
        self.run("destroy", "-auto-approve", "-no-color")
        self.times.append(time.perf_counter() - started)


def http_backend(url):
    return f"""  backend "http" {{
    address        = "{url}"
    lock_address   = "{url}"
    unlock_address = "{url}"
  }}"""


def s3_backend(bucket, key):
    return f"""  backend "s3" {{
    bucket                      = "{bucket}"
    key                         = "{key}"
    region                      = "us-east-1"
    use_lockfile                = true
    use_path_style              = true
    skip_credentials_validation = true
    skip_requesting_account_id  = true
    skip_region_validation      = true
    skip_metadata_api_check     = true
  }}"""


def wrk(url, connections, duration):
    """(requests/s, errors) of GET `url` for `duration` seconds."""
    if shutil.which("wrk"):
        threads = min(connections, os.cpu_count() or 1)
        out = subprocess.run(
            ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "30s", url],
            capture_output=True,
            text=True,
        )
        m = re.search(r"Requests/sec:\s+([\d.]+)", out.stdout)
        if not m:
            raise RuntimeError(f"wrk: {out.stdout}{out.stderr}")
        errors = 0
        m2 = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out.stdout)
        if m2:
            errors += int(m2.group(1))
        m3 = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out.stdout)
        if m3:
            errors += sum(int(x) for x in m3.groups())
        return float(m.group(1)), errors
    return python_get_load(url, connections, duration)


def python_get_load(url, connections, duration):
    """The fallback GET client when wrk is missing: one thread per
    connection, keep-alive."""
    parts = urllib.parse.urlsplit(url)
    counts = [0] * connections
    errors = [0] * connections
    stop_at = time.perf_counter() + duration

    def worker(i):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        while time.perf_counter() < stop_at:
            try:
                conn.request("GET", parts.path)
                resp = conn.getresponse()
                resp.read()
                if resp.status == 200:
                    counts[i] += 1
                else:
                    errors[i] += 1
            except (OSError, http.client.HTTPException):
                errors[i] += 1
                conn.close()
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.close()

    return per_second(connections, worker, counts), sum(errors)


def run_loadtest(binary, url, clients, state_bytes, duration, *options):
    """`stategate loadtest URL` with `options`; what it printed (its
    standard output and error together), and how it ended."""
    out = subprocess.run(
        [
            binary, "loadtest", url, *options,
            "--clients", str(clients),
            "--state-bytes", str(state_bytes),
            "--duration", f"{int(duration * 1000)}ms",
        ],
        capture_output=True,
        text=True,
        env=Stategate.environment({}),
        stdin=subprocess.DEVNULL,
    )
    return out.stdout + out.stderr, out.returncode


def loadtest(binary, url, clients, state_bytes, duration):
    text, code = run_loadtest(binary, url, clients, state_bytes, duration)
    m = re.search(r"(\d+) cycles in ([\d.]+)s: ([\d.]+) cycles/s", text)
    if not m:
        raise RuntimeError(f"loadtest printed no cycles/s (exit {code}):\n{text[-2000:]}")
    return float(m.group(3)), code


def creates(binary, url, clients, state_bytes, duration, tag):
    """New states per second from `stategate loadtest --new-states`, each
    of `clients` POSTing to fresh keys below `<url>/states/bench/<tag>`
    without a lock: (per second, how many, unexpected answers, the
    clients' own processor time per create in microseconds). A Rust
    client costs the cores it shares with the server half what Python's
    threads did (about 90 against 200 microseconds a create)."""
    before = os.times()
    text, code = run_loadtest(binary, f"{url}/states/bench/{tag}", clients, state_bytes, duration,
                              "--new-states")
    after = os.times()
    m = re.search(r"(\d+) new states in ([\d.]+)s: ([\d.]+) new states/s", text)
    if not m:
        raise RuntimeError(f"loadtest printed no new states/s (exit {code}):\n{text[-2000:]}")
    made = int(m.group(1))
    errors = sum(int(n) for n in re.findall(r"^unexpected: .* \((\d+) times\)$", text, re.M))
    cpu = (after[2] + after[3] - before[2] - before[3]) / made * 1e6 if made else 0.0
    return float(m.group(3)), made, errors, cpu


def write_all(fd, data):
    """Writes all of `data` to the file descriptor `fd`."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def per_second(threads, worker, counts):
    """Runs `worker(i)` on `threads` threads at once; the sum of `counts`
    they leave, per second of the run."""
    started = time.perf_counter()
    pool = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    return sum(counts) / (time.perf_counter() - started)


def file_loop(directory, threads, state_bytes, duration):
    """The floor of a crash-safe create: per file, write a temporary file,
    fsync it, rename it into place, fsync the directory. Files per second
    from `threads` threads (os.write and os.fsync release the GIL)."""
    directory.mkdir(parents=True, exist_ok=True)
    body = state_body(state_bytes)
    counts = [0] * threads
    stop_at = time.perf_counter() + duration

    def worker(i):
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        n = 0
        try:
            while time.perf_counter() < stop_at:
                n += 1
                tmp = f".tmp-{i}-{n}"
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444, dir_fd=dfd)
                try:
                    write_all(fd, body)
                    os.fsync(fd)
                finally:
                    os.close(fd)
                os.rename(tmp, f"t{i}-{n}", src_dir_fd=dfd, dst_dir_fd=dfd)
                os.fsync(dfd)
                counts[i] += 1
        finally:
            os.close(dfd)

    return per_second(threads, worker, counts)


def local_create_loop(directory, threads, state_bytes, duration):
    """The file operations the local store makes for one new state, and
    nothing else (no HTTP, no MD5, no JSON): the state written to an
    unnamed file, fsynced, linked in, its directory fsynced; then its
    history folder made, the copy hard-linked there, the record written to
    an unnamed file, fsynced, linked under a temporary name and renamed
    into place, the folder fsynced, and the pointer linked to the record
    under a temporary name and renamed into place. New states per second
    from `threads` threads, in the same process and files as
    [`file_loop`]: beside it, the cost of the layout itself."""
    states = directory / "states"
    history = directory / "history"
    states.mkdir(parents=True, exist_ok=True)
    history.mkdir(parents=True, exist_ok=True)
    body = state_body(state_bytes)
    record = b"{" + b'"x":0,' * 48 + b"}"
    counts = [0] * threads
    stop_at = time.perf_counter() + duration

    def unnamed(dir_fd, data, name):
        # os.link has no AT_EMPTY_PATH: /proc/self/fd/N with
        # AT_SYMLINK_FOLLOW is linkat(2)'s unprivileged way to name it.
        # Where unnamed files cannot be made, the store writes a named
        # temporary file and renames it, and so does this.
        try:
            fd = os.open(".", os.O_WRONLY | os.O_TMPFILE, 0o444, dir_fd=dir_fd)
            named = None
        except OSError:
            named = f"~{name}"
            fd = os.open(named, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o444, dir_fd=dir_fd)
        try:
            write_all(fd, data)
            os.fsync(fd)
            if named is None:
                os.link(f"/proc/self/fd/{fd}", name, dst_dir_fd=dir_fd, follow_symlinks=True)
        finally:
            os.close(fd)
        if named is not None:
            os.rename(named, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)

    def worker(i):
        sfd = os.open(states, os.O_RDONLY | os.O_DIRECTORY)
        hfd = os.open(history, os.O_RDONLY | os.O_DIRECTORY)
        n = 0
        try:
            while time.perf_counter() < stop_at:
                n += 1
                name = f"t{i}-{n}"
                unnamed(sfd, body, f"{name}+")
                os.fsync(sfd)
                os.mkdir(name, dir_fd=hfd)
                folder = os.open(name, os.O_RDONLY | os.O_DIRECTORY, dir_fd=hfd)
                try:
                    os.link(f"{name}+", "0000000001.tfstate+", src_dir_fd=sfd, dst_dir_fd=folder)
                    unnamed(folder, record, "~r")
                    os.rename("~r", "0000000001.json+", src_dir_fd=folder, dst_dir_fd=folder)
                    os.fsync(folder)
                    os.link("0000000001.json+", "~p", src_dir_fd=folder, dst_dir_fd=folder)
                    os.rename("~p", "newest.json+", src_dir_fd=folder, dst_dir_fd=folder)
                finally:
                    os.close(folder)
                counts[i] += 1
        finally:
            os.close(sfd)
            os.close(hfd)

    return per_second(threads, worker, counts)


def post_then_get(url, key, size):
    """POST a `size`-byte state streamed from a generator, then GET it and
    count the bytes; returns whether both answered 200 with the size."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        conn.request(
            "POST",
            f"/states/{key}",
            body=streamed_state(size),
            headers={"Content-Length": str(size), "Content-Type": "application/json"},
        )
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200:
            return f"POST {resp.status} {answer[:200]!r}"
        conn.request("GET", f"/states/{key}")
        resp = conn.getresponse()
        got, head = 0, b""
        while True:
            chunk = resp.read(1 << 20)
            if not chunk:
                break
            got += len(chunk)
            head = head or chunk[:200]
        if resp.status != 200:
            return f"GET {resp.status} {head!r}"
        if got != size:
            return f"GET {resp.status}, {got} bytes"
        return None
    finally:
        conn.close()


def concurrent_gets(url, path, readers, expected):
    """`readers` clients on a connection each send a GET of `path`, all
    before any answer is read, then read their answers at once, each
    compared with `expected` as it arrives; returns what went wrong."""
    parts = urllib.parse.urlsplit(url)
    sent = threading.Barrier(readers)
    failures = []

    def reader(i):
        try:
            sock = socket.create_connection((parts.hostname, parts.port), timeout=120)
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n".encode())
        except OSError as e:
            sock = e
        sent.wait()
        if isinstance(sock, OSError):
            failures.append(f"reader {i}: {sock}")
            return
        try:
            resp = http.client.HTTPResponse(sock)
            resp.begin()
            at = 0
            while True:
                chunk = resp.read(1 << 16)
                if not chunk:
                    break
                if chunk != expected[at:at + len(chunk)]:
                    failures.append(f"reader {i}: other bytes at {at}")
                    return
                at += len(chunk)
            if resp.status != 200 or at != len(expected):
                failures.append(f"reader {i}: {resp.status}, {at} bytes")
        except (OSError, http.client.HTTPException) as e:
            failures.append(f"reader {i}: {e}")
        finally:
            sock.close()

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(readers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def fleet_state(path, mib, serial):
    """Writes to `path` a state of about `mib` MiB: blocks of ten
    `aws_instance`s of about a kilobyte each. Version 2 changes every
    hundredth instance's id, leaves out every 997th instance, adds a block
    of ten and changes an output (as tests/e2e/large_views.rs)."""
    blocks = max(1, (mib << 20) // 10_900)
    with open(path, "w") as out:
        out.write(
            '{"version":4,"terraform_version":"1.9.0","serial":%d,"lineage":"fleet",'
            '"outputs":{"count":{"value":%d,"type":"number"},"region":{"value":"eu-west-1","type":"string"}},'
            '"resources":[' % (serial, serial)
        )
        names = [f"node{b}" for b in range(blocks)] + (["extra"] if serial == 2 else [])
        for b, name in enumerate(names):
            instances = []
            for k in range(10):
                i = b * 10 + k
                if serial == 2 and i % 997 == 5:
                    continue
                replaced = "-replaced" if serial == 2 and i % 100 == 0 else ""
                instances.append(
                    '{"index_key":%d,"schema_version":1,"attributes":{"id":"i-%08d%s",'
                    '"arn":"arn:aws:ec2:eu-west-1:123456789012:instance/i-%08d","ami":"ami-0123456789abcdef0",'
                    '"instance_type":"t3.micro","private_ip":"10.%d.%d.%d","tags":{"Name":"%s-%d","team":"platform",'
                    '"env":"prod"},"root_block_device":[{"volume_size":20,"volume_type":"gp3","encrypted":true}],'
                    '"user_data":"%s"},"sensitive_attributes":[],"dependencies":["aws_vpc.main","aws_subnet.private"]}'
                    % (k, i, replaced, i, i // 65536 % 256, i // 256 % 256, i % 256, name, k, "x" * (500 + i % 100))
                )
            out.write(("," if b else "")
                      + '{"mode":"managed","type":"aws_instance","name":"%s",' % name
                      + '"provider":"provider[\\"registry.terraform.io/hashicorp/aws\\"]","instances":['
                      + ",".join(instances) + "]}")
        out.write("]}\n")


def fleet_objects(states, versions):
    """The objects of `states` states of `versions` versions each, as
    stategate lays them out: each state's body, and in its history folder
    every version's copy and record and the pointer to the newest. Yields
    (key, body bytes)."""
    created = "2026-01-01T00:00:00Z"
    for i in range(states):
        key = f"fleet/s{i:05d}"
        body = b""
        for n in range(1, versions + 1):
            body = state_body(256, serial=n, lineage=f"fleet-{i}")
            meta = {
                "version": n, "serial": n, "lineage": f"fleet-{i}", "resources": 0, "size": len(body),
                "md5": hashlib.md5(body).hexdigest(), "created": created, "who": None, "lock_id": None,
                "operation": "write", "object_version": None,
            }
            hist = f".stategate/history/{key}/{n:010d}"
            yield f"{hist}.tfstate", body
            yield f"{hist}.json", json.dumps(meta).encode()
            if n == versions:
                yield f".stategate/history/{key}/newest.json", json.dumps({**meta, "oldest": 1}).encode()
        yield key, body


def build_fleet(store, sg, stores, states, versions):
    """Writes a fleet straight into the store of `sg` (stopped meanwhile),
    in the store's own layout, then starts it again."""
    stop(sg.proc)
    settings, _env = sg.settings_env
    objects = fleet_objects(states, versions)
    if store == "local":
        root = Path(settings["path"])
        for key, body in objects:
            path = root / f"{key}+"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(body)
    elif store == "sqlite":
        import sqlite3
        db = sqlite3.connect(settings["path"])
        now = time.time_ns()
        for g, (key, body) in enumerate(objects, 1_000_000):
            db.execute("INSERT INTO bodies (id, body) VALUES (?, ?)", (g, body))
            db.execute(
                "INSERT INTO objects (key, generation, modified_ns, size, body_id) VALUES (?, ?, ?, ?, ?)",
                (key, g, now, len(body), g),
            )
        db.execute("UPDATE generation SET last = (SELECT MAX(generation) FROM objects)")
        db.commit()
        db.close()
    elif store == "s3":
        listing = sg.work / "fleet.jsonl"
        with open(listing, "w") as out:
            for key, body in objects:
                out.write(json.dumps({"key": key, "body": body.decode()}) + "\n")
        answer = stores.moto.command(f"fill {settings['bucket']} {listing}")
        if answer != "ok":
            raise RuntimeError(f"moto fill: {answer}")
        listing.unlink()
    else:
        raise ValueError(store)
    sg.restart()


def post_file(url, path):
    """POSTs a file as a state, streamed; returns None or what failed."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        with open(path, "rb") as body:
            conn.request("POST", parts.path, body=body,
                         headers={"Content-Length": str(os.path.getsize(path)),
                                  "Content-Type": "application/json"})
            resp = conn.getresponse()
            answer = resp.read()
        return None if resp.status == 200 else f"POST {resp.status} {answer[:200]!r}"
    finally:
        conn.close()


EXPLORE_TYPES = [
    ("aws_db_instance", "hashicorp/aws"), ("aws_instance", "hashicorp/aws"), ("aws_s3_bucket", "hashicorp/aws"),
    ("aws_iam_role", "hashicorp/aws"), ("aws_security_group", "hashicorp/aws"), ("aws_lambda_function", "hashicorp/aws"),
    ("google_compute_instance", "hashicorp/google"), ("google_storage_bucket", "hashicorp/google"),
    ("azurerm_resource_group", "hashicorp/azurerm"), ("kubernetes_deployment", "hashicorp/kubernetes"),
    ("random_id", "hashicorp/random"), ("terraform_data", None),
]
EXPLORE_VERSIONS = ["1.3.9", "1.4.6", "1.5.7", "1.6.6", "1.7.5", "1.9.8", "1.11.4"]


def fleet_body(i, resources):
    """A Terraform state as Terraform writes one: `resources` blocks of
    varied types, providers and modules, with attributes."""
    blocks = []
    for r in range(resources):
        t, provider = EXPLORE_TYPES[(i * 7 + r) % len(EXPLORE_TYPES)]
        source = f"registry.terraform.io/{provider}" if provider else "terraform.io/builtin/terraform"
        block = {
            "mode": "data" if r % 17 == 16 else "managed", "type": t, "name": f"r{r}",
            "provider": f'provider["{source}"]',
            "instances": [
                {"index_key": k, "schema_version": 0,
                 "attributes": {"id": f"{t}-{i}-{r}-{k}", "arn": f"arn:aws:x:::{i}/{r}/{k}", "tags": {"team": f"t{i % 40}"}},
                 "sensitive_attributes": []}
                for k in range(1 + r % 3)
            ],
        }
        if r % 4:
            block["module"] = f"module.m{r % 25}"
        blocks.append(block)
    return json.dumps({
        "version": 4, "terraform_version": EXPLORE_VERSIONS[i % len(EXPLORE_VERSIONS)], "serial": 1,
        "lineage": f"fleet-{i}", "outputs": {"id": {"value": f"v{i}", "type": "string"}}, "resources": blocks,
    }).encode()


def write_fleet(url, states, resources, threads=8):
    """POSTs `states` states of `resources` blocks each; returns seconds."""
    parts = urllib.parse.urlsplit(url)
    errors = []
    started = time.perf_counter()

    def worker(w):
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
        for i in range(w, states, threads):
            conn.request("POST", f"/states/fleet/team-{i % 50}/s{i}.tfstate", body=fleet_body(i, resources),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = response.read()
            if response.status != 200:
                errors.append(f"{response.status} {answer[:200]!r}")
                return

    pool = [threading.Thread(target=worker, args=(w,)) for w in range(threads)]
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    if errors:
        raise RuntimeError(f"writing the fleet: {errors[0]}")
    return time.perf_counter() - started


def timed_get(url):
    """Seconds to GET `url` and read its whole answer, which must be 200."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=600)
    try:
        started = time.perf_counter()
        conn.request("GET", parts.path + (f"?{parts.query}" if parts.query else ""))
        resp = conn.getresponse()
        while resp.read(1 << 20):
            pass
        took = time.perf_counter() - started
        if resp.status != 200:
            raise RuntimeError(f"GET {url}: {resp.status}")
        return took
    finally:
        conn.close()


def write_latencies(url, levels, timed, size):
    """p50 milliseconds of a write to a state whose history holds each of
    `levels` versions (the server keeps every version): one state per
    level, at `url`-<level>, its history built by POSTing rising serials
    over one keep-alive connection as fast as the server takes them. Then
    `timed` writes to each are timed one by one, round-robin over the
    levels, so a change in the host's speed hits every level alike."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=120)
    serials = {level: 0 for level in levels}

    def post(level):
        serials[level] += 1
        conn.request("POST", f"{parts.path}-{level}", body=state_body(size, serials[level]),
                     headers={"Content-Type": "application/json"})
        resp = conn.getresponse()
        answer = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"POST serial {serials[level]}: {resp.status} {answer[:200]!r}")

    times = {level: [] for level in levels}
    try:
        for level in levels:
            while serials[level] < level:
                post(level)
        for _ in range(timed):
            for level in levels:
                started = time.perf_counter()
                post(level)
                times[level].append((time.perf_counter() - started) * 1000)
    finally:
        conn.close()
    return {level: median(t) for level, t in times.items()}


def read_latency(url, runs):
    """p50 milliseconds of GET `url` (which must answer 200), and the bytes."""
    times = []
    size = 0
    for _ in range(runs):
        started = time.perf_counter()
        status, body = request("GET", url)
        times.append((time.perf_counter() - started) * 1000)
        if status != 200:
            raise RuntimeError(f"GET {url}: {status} {body[:200]!r}")
        size = len(body)
    return median(times), size


def healthz_once(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def exec_to_ready(binary, store, work, settings, env, rounds):
    """Milliseconds from spawn until GET /healthz answers 200, each run a
    fresh process on the same store; the median and every value."""
    times = []
    for _ in range(rounds):
        for _attempt in range(5):
            port = free_port()
            cmd = Stategate.command(binary, store, settings, port, [])
            log_path = work / "exec.log"
            with open(log_path, "wb") as log_file:
                started = time.perf_counter()
                proc = spawn(cmd, cwd=work, env=Stategate.environment(env), stderr=log_file)
                ready = False
                while proc.poll() is None and time.perf_counter() - started < 60:
                    if healthz_once(port):
                        ready = True
                        break
                    time.sleep(0.001)
                elapsed = (time.perf_counter() - started) * 1000
            stop(proc)
            if ready:
                times.append(elapsed)
                break
            if "in use" not in log_path.read_text(errors="replace"):
                raise RuntimeError(f"stategate did not become ready:\n{log_path.read_text()[-1500:]}")
    return median(times), times


# --------------------------------------------------------------------------
# The table.


class Table:
    def __init__(self):
        self.rows = []

    def add(self, measure, store, figure, unit, baseline=None, baseline_name="", ratio_kind=None,
            target=None, note=""):
        """ratio_kind: "time" (figure/baseline, lower is better),
        "rate" (figure/baseline, higher is better) or None.
        target: ("ratio" | "figure", "<=" | ">=", value) or None."""
        ratio = None
        if baseline not in (None, 0) and figure is not None and ratio_kind:
            ratio = figure / baseline
        met = None
        if target and figure is not None:
            on, op, value = target
            x = ratio if on == "ratio" else figure
            if x is not None:
                met = x <= value if op == "<=" else x >= value
        self.rows.append(
            {
                "measure": measure,
                "store": store,
                "figure": figure,
                "unit": unit,
                "baseline": baseline,
                "baseline_name": baseline_name,
                "ratio": ratio,
                "target": None if not target else f"{'ratio' if target[0] == 'ratio' else ''} {target[1]} {target[2]}".strip(),
                "met": met,
                "note": note,
            }
        )
        row = self.rows[-1]
        log(f"  {measure} [{store}]: {fmt(figure)} {unit}"
            + (f" vs {fmt(baseline)} ({baseline_name})" if baseline is not None else "")
            + (f" = {ratio:.3f}x" if ratio is not None else "")
            + (f" target {row['target']}: {'met' if met else 'MISSED'}" if met is not None else ""))

    def render(self, header):
        cols = ["measurement", "store", "figure", "baseline", "ratio", "target", "met"]
        lines = []
        for r in self.rows:
            base = "" if r["baseline"] is None else f"{fmt(r['baseline'])} {r['unit']} ({r['baseline_name']})"
            lines.append(
                [
                    r["measure"],
                    r["store"],
                    "" if r["figure"] is None else f"{fmt(r['figure'])} {r['unit']}",
                    base,
                    "" if r["ratio"] is None else f"{r['ratio']:.3f}",
                    r["target"] or "",
                    {True: "yes", False: "NO", None: ""}[r["met"]] + (f" ({r['note']})" if r["note"] else ""),
                ]
            )
        widths = [max(len(c), *(len(l[i]) for l in lines)) if lines else len(c) for i, c in enumerate(cols)]
        out = [header, ""]
        out.append("  ".join(c.ljust(w) for c, w in zip(cols, widths)).rstrip())
        out.append("  ".join("-" * w for w in widths))
        for l in lines:
            out.append("  ".join(v.ljust(w) for v, w in zip(l, widths)).rstrip())
        return "\n".join(out)


def fmt(x):
    if x is None:
        return "-"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


# --------------------------------------------------------------------------


def git_commit():
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True)
        return out.stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def build(args):
    if args.binary:
        return str(Path(args.binary).resolve()), "given"
    binary = REPO / "target" / "release" / "stategate"
    if not args.no_build:
        log("building: cargo build --release")
        subprocess.run(["nice", "-n", "10", "cargo", "build", "--release"], cwd=REPO, check=True)
    if not binary.exists():
        raise SystemExit(f"{binary} is missing: run without --no-build")
    return str(binary), "release"


def parse_args():
    p = argparse.ArgumentParser(description="stategate's benchmarks (see bench/README.md)")
    p.add_argument("--quick", action="store_true", help="tiny sizes, to keep the script working (CI)")
    p.add_argument("--stores", help="comma-separated, of " + ",".join(ALL_STORES))
    p.add_argument("--no-build", action="store_true", help="use the existing target/release/stategate")
    p.add_argument("--binary", help="a stategate binary to measure (no build)")
    p.add_argument("--db-url", default=os.environ.get("STATEGATE_BENCH_DB_URL"),
                   help="dbURL of a database for the `db` row (or STATEGATE_BENCH_DB_URL)")
    p.add_argument("--only", help="comma-separated parts: terraform,get,write,history,memory,exec,views,explore,listing")
    p.add_argument("--resources", type=int, help="terraform_data resources (300; quick 20)")
    p.add_argument("--runs", type=int, help="terraform runs per configuration (10; quick 2)")
    p.add_argument("--duration", type=float, help="seconds of every load (10; quick 1)")
    p.add_argument("--mem-mib", type=int, help="MiB of every state of the memory load (256; quick 8)")
    p.add_argument("--view-mib", help="comma-separated MiB of the states the views read (64,256; quick 4,8)")
    p.add_argument("--json", default=str(REPO / "target" / "bench" / "results.json"), help="where the JSON goes")
    args = p.parse_args()
    quick = args.quick
    args.resources = args.resources or (20 if quick else 300)
    args.runs = args.runs or (2 if quick else 10)
    args.duration = args.duration or (1 if quick else 10)
    args.mem_mib = args.mem_mib or (8 if quick else 256)
    args.exec_rounds = 10
    args.fan_out = 50 if quick else 500
    args.view_mib = ([int(m) for m in args.view_mib.split(",")] if args.view_mib
                     else [4, 8] if quick else [64, 256])
    if args.stores:
        args.stores = [s.strip() for s in args.stores.split(",") if s.strip()]
        bad = [s for s in args.stores if s not in ALL_STORES]
        if bad:
            p.error(f"unknown store {bad[0]}; stores are {', '.join(ALL_STORES)}")
    else:
        args.stores = [s for s in ALL_STORES if s != "db" or args.db_url]
    if "db" in args.stores and not args.db_url:
        p.error("the db row needs --db-url")
    args.only = (set(args.only.split(",")) if args.only
                 else {"terraform", "get", "write", "history", "memory", "exec", "views", "explore", "listing"})
    args.fleet_states = 200 if quick else 10_000
    args.fleet_states_s3 = 200 if quick else 1_000
    args.fleet_versions = 10 if quick else 100
    args.listing_runs = 3 if quick else 9
    args.write_rounds = 1 if quick else 2
    args.history_levels = [10, 50, 100] if quick else [100, 1000, 10000]
    args.history_timed = 10 if quick else 50
    return args


def main():
    args = parse_args()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    binary, profile = build(args)
    cores = os.cpu_count()
    commit = git_commit()
    table = Table()
    skipped = []
    stores = Stores(args, binary)

    # One long-running server per store, for the terraform and load rows.
    servers = {}
    for store in args.stores:
        try:
            stores.peer(store)
            servers[store] = Stategate(binary, stores, store)
            log(f"stategate on {store}: {servers[store].url}")
        except Exception as e:  # a store that cannot run here is skipped, and said so
            skipped.append(f"{store}: {str(e).strip().splitlines()[0] if str(e).strip() else e!r}")
            log(f"skipping {store}: {e}")
    active = list(servers)

    def part(name, fn):
        if name not in args.only:
            return
        try:
            fn()
        except Exception as e:
            skipped.append(f"{name}: {e}")
            log(f"{name} failed: {e}")

    # 1. terraform apply + destroy.
    def terraform():
        if not shutil.which("terraform"):
            raise RuntimeError("terraform is not on PATH")
        n = args.resources
        log(f"terraform: apply+destroy of {n} terraform_data, {args.runs} runs per configuration")
        stub = Stub()
        configs = {
            "stub": TerraformConfig("stub", http_backend(f"{stub.url}/bench/tf"), n),
            "local backend": TerraformConfig("local backend", '  backend "local" {}', n),
        }
        if stores.moto is not None:
            bucket = stores.moto.new_bucket()
            configs["native s3"] = TerraformConfig(
                "native s3", s3_backend(bucket, "bench/terraform.tfstate"), n,
                env={**stores.moto.env(), "AWS_ENDPOINT_URL_S3": stores.moto.endpoint},
            )
        for store in active:
            configs[store] = TerraformConfig(store, http_backend(f"{servers[store].url}/states/bench/tf"), n)
        # Round-robin, so drift of the host's speed hits every configuration alike.
        for r in range(args.runs):
            for cfg in configs.values():
                cfg.apply_destroy()
            log(f"  run {r + 1}/{args.runs}: " + ", ".join(f"{k} {c.times[-1]:.2f}s" for k, c in configs.items()))
        stub_t = median(configs["stub"].times)
        local_t = median(configs["local backend"].times)
        measure = f"terraform apply+destroy {n}"

        def spread(name):
            times = configs[name].times
            return f"runs {min(times):.2f}-{max(times):.2f}s"

        table.add(measure, "stub", stub_t, "s", local_t, "local backend", "time",
                  note="baseline; " + spread("stub"))
        if "native s3" in configs:
            table.add(measure, "native s3", median(configs["native s3"].times), "s", stub_t, "stub", "time",
                      note="baseline; " + spread("native s3"))
        for store in active:
            t = median(configs[store].times)
            table.add(measure, store, t, "s", stub_t, "stub", "time", ("ratio", "<=", 1.02), spread(store))
            if store == "s3" and "native s3" in configs:
                table.add(measure, "s3", t, "s", median(configs["native s3"].times), "native s3", "time",
                          ("ratio", "<=", 1.03))
            table.add(measure, store, t, "s", local_t, "local backend", "time")
        stop(stub.proc)

    # 2. GET 1 MiB, 64 connections.
    def get():
        size = 1 << 20
        body = state_body(size)
        nginx = Nginx(cores)
        (nginx.root / "state.json").write_bytes(body)
        (nginx.root / "state.json").chmod(0o644)
        log(f"GET 1 MiB, 64 connections, {args.duration:g}s each")
        for store in active:
            url = f"{servers[store].url}/states/bench/get"
            status, answer = request("POST", url, body)
            if status != 200:
                raise RuntimeError(f"POST 1 MiB to {store}: {status} {answer[:200]!r}")
            base, base_err = wrk(f"{nginx.url}/state.json", 64, args.duration)
            figure, errors = wrk(url, 64, args.duration)
            note = f"{errors} errors" if errors else ""
            if base_err:
                note += f" nginx {base_err} errors"
            target = ("ratio", ">=", 0.9) if store in DISK_STORES else None
            table.add("GET 1 MiB x64 conns", store, figure, "req/s", base, "nginx", "rate", target, note.strip())
        stop(nginx.proc)
        for store in active:
            if store in DISK_STORES + DB_STORES:
                fan_out(store)

    # `terraform_remote_state` fan-out: many GETs of one state at once, on a
    # fresh process, so its peak RSS is theirs.
    def fan_out(store):
        readers, mib = args.fan_out, 1 if args.quick else 5
        size = mib << 20
        body = state_body(size)
        sg = Stategate(binary, stores, store, ["--max-connections", str(readers + 64)])
        try:
            status, answer = request("POST", f"{sg.url}/states/bench/fan-out", body)
            if status != 200:
                raise RuntimeError(f"POST {mib} MiB to {store}: {status} {answer[:200]!r}")
            before = sg.status("VmHWM")
            started = time.perf_counter()
            failures = concurrent_gets(sg.url, "/states/bench/fan-out", readers, body)
            took = time.perf_counter() - started
            growth = sg.status("VmHWM") - before
            note = f"{len(failures)} failed: {failures[0]}" if failures else f"{took:.1f}s"
            target = ("figure", "<=", 128) if store in DISK_STORES else None
            table.add(f"peak RSS growth, {readers} GETs of {mib} MiB", store, growth, "MiB", target=target,
                      note=note)
        finally:
            sg.stop()
            shutil.rmtree(sg.work, ignore_errors=True)

    # 3. Lock cycles and creates, against the plain file loop.
    def write():
        log(f"writes: 32 clients, 100 KiB states, {args.duration:g}s each")
        # The clients share the machine's cores with the server they load:
        # the creates they make against nginx answering every POST with no
        # work (nothing read back, nothing written) are the most any server
        # could be shown making here.
        nginx = Nginx(cores)
        # The loop's files of every store are removed at the end: on ext4
        # without a journal, new inodes skip those freed in the last
        # seconds to minutes, one check each, so removing tens of thousands
        # of files between loads would slow whatever creates files next
        # (the next store's loop first).
        floor_dirs = []
        # The most a store's rows can write, all of it kept to the end: the
        # loop (and on local disk its file operations alone) at up to
        # 10,000 files a second, stategate's creates at up to 5,000, every
        # file 100 KiB, and a GiB for the rest.
        loop_seconds = (1 + 3 * args.write_rounds) * min(args.duration, 3.0)
        need = int((loop_seconds * 10_000 + args.write_rounds * args.duration * 5_000) * 102400) + (1 << 30)
        for store in active:
            # Where the disk has less room than that, the files kept so far
            # are removed first (the next loads may then meet the slow
            # allocation described above, and the row says so), and a store
            # still short of room is not measured: the run goes on rather
            # than stopping with the disk full.
            cleared = ""
            if shutil.disk_usage(servers[store].work).free < need and floor_dirs:
                for floor_dir in floor_dirs:
                    shutil.rmtree(floor_dir, ignore_errors=True)
                floor_dirs.clear()
                cleared = "the earlier stores' files were removed just before, to make room; "
                log(f"{store}: {cleared}")
            free = shutil.disk_usage(servers[store].work).free
            if free < need:
                skipped.append(f"write rows of {store}: {free / 2**30:.1f} GiB free where they write, "
                               f"and they can write {need / 2**30:.0f} GiB; free some room, or lower "
                               "--duration")
                log(skipped[-1])
                continue
            # The file loop's rate follows the disk, which swings several
            # fold on a shared machine, so it runs between every two of
            # stategate's loads, in rounds, on the file system of the
            # store's root; the baseline is the mean of every run, each
            # figure the mean of its rounds.
            def floor_run():
                floor_dirs.append(servers[store].work / f"file-loop-{len(floor_dirs)}")
                return file_loop(floor_dirs[-1], 32, 102400, min(args.duration, 3.0))

            # On local disk, the store's own file operations for a new
            # state, replayed beside the loop: how much of the gap to the
            # loop is the layout's, and how much stategate's code.
            def layout_run():
                floor_dirs.append(servers[store].work / f"file-loop-{len(floor_dirs)}")
                return local_create_loop(floor_dirs[-1], 32, 102400, min(args.duration, 3.0))

            floors = [floor_run()]
            layouts = []
            made_runs, cycle_runs, errors, code = [], [], 0, 0
            # stategate's processor time per create, in its own code (user)
            # and in the kernel for it (system): the user time follows the
            # binary, not the disk, so it tells two builds apart where the
            # ratio cannot; the system time includes the file system's
            # search for free inodes, which swings with the disk.
            cpu_per_create = []
            # The clients' own processor time per create: with stategate's,
            # what the two share the cores by.
            client_cpu = []
            for _ in range(args.write_rounds):
                pid = servers[store].proc.pid
                before = cpu_seconds(pid)
                made, count, failed, clients = creates(binary, servers[store].url, 32, 102400,
                                                       args.duration, f"new{time.monotonic_ns()}")
                after = cpu_seconds(pid)
                cpu_per_create.append(
                    tuple((a - b) / count * 1e6 if count else 0.0 for a, b in zip(after, before))
                )
                client_cpu.append(clients)
                if store == "local":
                    layouts.append(layout_run())
                floors.append(floor_run())
                cycles, exit_code = loadtest(binary, f"{servers[store].url}/states/bench/lt", 32, 102400,
                                             args.duration)
                floors.append(floor_run())
                made_runs.append(made)
                cycle_runs.append(cycles)
                errors += failed
                code = code or exit_code
            ceiling, _, _, ceiling_cpu = creates(binary, nginx.url, 32, 102400, min(args.duration, 3.0),
                                                 "ceiling")
            made, cycles = statistics.mean(made_runs), statistics.mean(cycle_runs)
            floor = statistics.mean(floors)
            spread = (cleared + f"file loop {' '.join(f'{f:.0f}' for f in floors)}; "
                      f"creates {' '.join(f'{m:.0f}' for m in made_runs)}; "
                      f"cycles {' '.join(f'{c:.0f}' for c in cycle_runs)}; "
                      "stategate CPU per create (user+system) "
                      f"{' '.join(f'{u:.0f}+{k:.0f}' for u, k in cpu_per_create)} us, "
                      f"the clients' {' '.join(f'{c:.0f}' for c in client_cpu)} us; "
                      f"the clients against a zero-work nginx {ceiling:.0f} /s "
                      f"= {ceiling / floor if floor else 0:.3f}x the loop, "
                      f"their CPU per create {ceiling_cpu:.0f} us")
            # The targets are those of new states; a lock cycle (four
            # requests, three of them changes) is shown beside them.
            target = {"local": 0.6, "sqlite": 0.5}.get(store)
            target = ("ratio", ">=", target) if target else None
            table.add("lock cycles/s (loadtest 32)", store, cycles, "/s", floor, "file loop", "rate", None,
                      "; ".join(x for x in ["unexpected answers" if code else "", spread] if x))
            if layouts:
                layout = statistics.mean(layouts)
                spread = (f"{made / layout if layout else 0:.3f}x the same file operations alone "
                          f"({' '.join(f'{x:.0f}' for x in layouts)} /s); " + spread)
            table.add("new-state creates/s (32)", store, made, "/s", floor, "file loop", "rate", target,
                      "; ".join(x for x in [f"{errors} errors" if errors else "", spread] if x))
            if layouts:
                table.add("new-state creates/s (32), file operations alone", store, layout, "/s", floor,
                          "file loop", "rate", None,
                          "the local store's system calls for a new state, from Python, with no HTTP, "
                          f"MD5 or JSON ({' '.join(f'{x:.0f}' for x in layouts)} /s)")
        stop(nginx.proc)
        for floor_dir in floor_dirs:
            shutil.rmtree(floor_dir, ignore_errors=True)

    # 4. A write's cost as one state's history grows, on fresh processes
    # keeping every version; and a page of that history against the whole.
    def history():
        levels = args.history_levels
        log(f"history: write p50 at {', '.join(f'{n:,}' for n in levels)} versions, "
            f"{args.history_timed} timed writes each")
        for store in active:
            if store not in DISK_STORES:
                continue
            sg = Stategate(binary, stores, store, env={"STATEGATE_HISTORY_KEEP": "0"})
            try:
                url = f"{sg.url}/states/bench/history"
                p50 = write_latencies(url, levels, args.history_timed, 4096)
                first = levels[0]
                for level in levels:
                    measure = f"write p50 at {level:,} versions"
                    if level == first:
                        table.add(measure, store, p50[level], "ms")
                        continue
                    target = ("ratio", "<=", 1.5) if level == levels[-1] else None
                    table.add(measure, store, p50[level], "ms", p50[first], f"at {first:,}", "time", target)
                longest = f"{url}-{levels[-1]}"
                whole, whole_bytes = read_latency(f"{longest}?history", 3)
                page, page_bytes = read_latency(f"{longest}?history&limit=100", 20)
                table.add(f"GET ?history&limit=100 at {levels[-1]:,}", store, page, "ms", whole,
                          "whole ?history", "time",
                          note=f"{page_bytes / 1024:.0f} KiB against {whole_bytes / 1024:.0f} KiB")
            finally:
                sg.stop()
                shutil.rmtree(sg.work, ignore_errors=True)

    # 5 and 6. Memory and exec->ready, on fresh processes.
    def memory():
        size = args.mem_mib << 20
        log(f"memory: idle, then 8 clients each POST then GET {args.mem_mib} MiB")
        for store in active:
            extra = ["--max-body-bytes", str(size + (1 << 20))]
            sg = Stategate(binary, stores, store, extra)
            try:
                time.sleep(1)
                request("GET", f"{sg.url}/healthz")
                time.sleep(0.5)
                table.add("idle RSS", store, sg.status("VmRSS"), "MiB", target=("figure", "<=", 20))
                if store not in DISK_STORES + DB_STORES:
                    table.add(f"peak RSS 8 x {args.mem_mib} MiB", store, None, "MiB",
                              note="not run: the test peer holds every byte in memory")
                    stalled_get_growth(sg, store)
                    continue
                failures = []
                started = time.perf_counter()
                pool = [
                    threading.Thread(
                        target=lambda i=i: failures.append(post_then_get(sg.url, f"bench/mem/c{i}", size))
                    )
                    for i in range(8)
                ]
                for t in pool:
                    t.start()
                for t in pool:
                    t.join()
                took = time.perf_counter() - started
                bad = [f for f in failures if f]
                target = ("figure", "<=", 128) if store in DISK_STORES else None
                table.add(f"peak RSS 8 x {args.mem_mib} MiB", store, sg.status("VmHWM"), "MiB", target=target,
                          note=(f"{len(bad)} failed: {bad[0]}" if bad else f"{took:.1f}s"))
            finally:
                sg.stop()
                shutil.rmtree(sg.work, ignore_errors=True)

    def stalled_get_growth(sg, store):
        """RSS growth while 4 clients hold a GET of a state and read
        nothing, at a quarter of the memory size and at the whole: a store
        that streams reads stays flat in the state size."""
        for mib in (max(1, args.mem_mib // 4), args.mem_mib):
            key = f"bench/stall/{mib}"
            failed = post_then_get(sg.url, key, mib << 20)
            if failed:
                table.add(f"RSS growth, 4 stalled GETs of {mib} MiB", store, None, "MiB", note=failed)
                continue
            time.sleep(0.5)
            before = sg.status("VmRSS")
            parts = urllib.parse.urlsplit(sg.url)
            held = []
            for _ in range(4):
                sock = socket.create_connection((parts.hostname, parts.port))
                sock.sendall(f"GET /states/{key} HTTP/1.1\r\nHost: {parts.netloc}\r\n\r\n".encode())
                held.append(sock)
            time.sleep(3)
            growth = sg.status("VmRSS") - before
            for sock in held:
                sock.close()
            table.add(f"RSS growth, 4 stalled GETs of {mib} MiB", store, growth, "MiB",
                      target=("figure", "<=", 16))

    # 7. The dashboard's views of large states, on fresh processes.
    def views():
        sizes = args.view_mib
        log(f"views: diff and state page of two versions of {' and '.join(f'{m} MiB' for m in sizes)}")
        for store in active:
            if store not in DISK_STORES:
                continue
            for mib in sizes:
                view_rows(store, mib)

    def view_rows(store, mib):
        key = "bench/fleet"
        work = temp_dir(f"views-{store}")
        bodies = [work / f"v{serial}.json" for serial in (1, 2)]
        for serial, path in enumerate(bodies, 1):
            fleet_state(path, mib, serial)
        largest = max(p.stat().st_size for p in bodies) / (1 << 20)
        limit = str(4 * (mib << 20))
        extra = ["--max-body-bytes", limit]
        env = {"STATEGATE_UI_MAX_VIEW_BYTES": limit}
        fresh = lambda: Stategate(binary, stores, store, extra, work=work, env=env)
        sg = fresh()
        try:
            for path in bodies:
                failed = post_file(f"{sg.url}/states/{key}", path)
                if failed:
                    raise RuntimeError(failed)
        finally:
            sg.stop()
        for path in bodies:
            path.unlink()
        runs = 1 if args.quick else 3
        measured = {}
        for view, path in (("diff", f"/api/v1/diff/{key}"), ("state page", f"/ui/states/{key}")):
            # A fresh process each, so its peak is this view's alone; the
            # first answer gives the peak, the median of all the time.
            sg = fresh()
            try:
                request("GET", f"{sg.url}/healthz")
                time.sleep(0.3)
                idle = sg.status("VmRSS")
                times = [timed_get(f"{sg.url}{path}") for _ in range(runs)]
                peak = sg.status("VmHWM")
                time.sleep(0.3)
                measured[view] = (median(times), peak, idle, sg.status("VmRSS"))
            finally:
                sg.stop()
        # Reading both versions as a client would: GET ?version=N, which
        # checks each body against its recorded MD5 on the way.
        sg = fresh()
        try:
            read = median([
                sum(timed_get(f"{sg.url}/states/{key}?version={n}") for n in (1, 2)) for _ in range(runs)
            ])
        finally:
            sg.stop()
            shutil.rmtree(work, ignore_errors=True)
        bound = 64 + largest / 2
        for view, (took, peak, idle, after) in measured.items():
            target = ("ratio", "<=", 3) if view == "diff" else None
            table.add(f"{view} 2 x {mib} MiB", store, took, "s", read, "GET both versions", "time", target)
            table.add(f"peak RSS, {view} 2 x {mib} MiB", store, peak, "MiB", target=("figure", "<=", round(bound)),
                      note=f"idle {idle:.0f} MiB, {after:.0f} MiB after")

    # 8. The fleet explorer: a fleet of real states written through the
    # API, a fresh process indexing it from the store, then searches.
    def explore():
        n_states, n_resources = (200, 20) if args.quick else (10_000, 100)
        runs = 5 if args.quick else 21
        store = "local"
        if store not in active:
            raise RuntimeError("the explore rows run on the local store")
        log(f"explore: {n_states} states x {n_resources} resources, searches median of {runs}")
        work = temp_dir("explore")
        sg = Stategate(binary, stores, store, work=work)
        try:
            wrote = write_fleet(sg.url, n_states, n_resources)
        finally:
            sg.stop()
        # An empty store's process, for the memory the index adds.
        empty = Stategate(binary, stores, store)
        try:
            request("GET", f"{empty.url}/api/v1/search?type=x")
            time.sleep(0.5)
            empty_rss = empty.status("VmRSS")
        finally:
            empty.stop()
        started = time.perf_counter()
        sg = Stategate(binary, stores, store, work=work)
        try:
            deadline = time.time() + 1800
            while True:
                status, body = request("GET", f"{sg.url}/api/v1/search?limit=1")
                found = json.loads(body)
                if status == 200 and found["complete"]:
                    break
                if time.time() > deadline:
                    raise RuntimeError("the index was not built in 30 minutes")
                time.sleep(0.05)
            built = time.perf_counter() - started
            if found["total_states"] != n_states:
                raise RuntimeError(f"the index holds {found['total_states']} states, not {n_states}")
            table.add(f"explore index {n_states} states cold", store, built, "s",
                      note=f"fleet written in {wrote:.0f}s")
            time.sleep(0.5)
            table.add(f"explore RSS growth, {n_states} x {n_resources}", store,
                      sg.status("VmRSS") - empty_rss, "MiB", target=("figure", "<=", 64),
                      note=f"{empty_rss:.0f} MiB without states")
            baseline = median([timed_get(f"{sg.url}/healthz") for _ in range(runs)])
            for name, query in (
                ("type+provider", "type=aws_db_instance&provider=hashicorp/aws&limit=100"),
                ("address glob", "address=module.*.aws_db_instance.*&limit=100"),
                ("version+age", "terraform_version=%3C1.5&written_before=2999-01-01&limit=100"),
            ):
                url = f"{sg.url}/api/v1/search?{query}"
                timed_get(url)
                took = median([timed_get(url) for _ in range(runs)])
                table.add(f"explore search {name}, warm", store, took * 1000, "ms", baseline * 1000,
                          "GET /healthz", "time", ("figure", "<=", 200))
        finally:
            sg.stop()
            shutil.rmtree(work, ignore_errors=True)
    # 9. Listing states, with one version each and with many.
    def listing():
        log(f"listing: {args.fleet_states:,} states of 1 and of {args.fleet_versions} versions")
        for store in active:
            if store not in LISTING_STORES:
                continue
            states = args.fleet_states if store != "s3" else args.fleet_states_s3
            # Both fleets are built and served first, then listed in turn
            # (one of each, then again): listings of tens of milliseconds
            # taken minutes apart, with a fleet built in between, differ by
            # more than the history could make them.
            servers_by_versions, built = {}, 0.0
            try:
                for versions in (1, args.fleet_versions):
                    # The explorer lists the store at start only, not while
                    # the listings are timed and counted.
                    sg = Stategate(binary, stores, store, extra=("--explore-refresh", "0"))
                    servers_by_versions[versions] = sg
                    started = time.perf_counter()
                    build_fleet(store, sg, stores, states, versions)
                    built = time.perf_counter() - started
                    status, body = request("GET", f"{sg.url}/api/v1/states")
                    total = json.loads(body).get("total") if status == 200 else None
                    if total != states:
                        raise RuntimeError(f"{store}: the listing showed {total} of {states} states: {body[:200]!r}")
                times = {versions: [] for versions in servers_by_versions}
                lists = dict.fromkeys(servers_by_versions, 0)
                # A listing on disk takes milliseconds: more of them.
                runs = args.listing_runs * (1 if store == "s3" else 4)
                for _ in range(runs):
                    for versions, sg in servers_by_versions.items():
                        # Counted in the server's own bucket: the other
                        # server's explorer may list its own meanwhile.
                        bucket = sg.settings_env[0].get("bucket")
                        lists_before = stores.moto.bucket_lists(bucket) if store == "s3" else 0
                        times[versions].append(timed_get(f"{sg.url}/api/v1/states"))
                        if store == "s3":
                            lists[versions] += stores.moto.bucket_lists(bucket) - lists_before
            finally:
                for sg in servers_by_versions.values():
                    sg.stop()
                    shutil.rmtree(sg.work, ignore_errors=True)
            none, many = median(times[1]), median(times[args.fleet_versions])
            note = f"fleet built in {built:.0f}s"
            measure = f"list {states:,} states x {args.fleet_versions} versions"
            if store == "s3":
                # moto's own time grows with the objects a bucket holds
                # (it walks them all for a listing page): what stategate
                # controls, and the target, is the requests it makes.
                per_run = {v: n / runs for v, n in lists.items()}
                note = f"listing {many:.2f} s against {none:.2f} s; " + note
                table.add(measure, store, per_run[args.fleet_versions], "LIST requests", per_run[1],
                          "1 version each", "time", ("ratio", "<=", 1.2), note)
                continue
            table.add(measure, store, many, "s", none, "1 version each", "time", ("ratio", "<=", 1.2), note)

    def exec_ready():
        log(f"exec -> /healthz 200, median of {args.exec_rounds}")
        for store in active:
            work = temp_dir(f"exec-{store}")
            settings, env = stores.settings(store, work)
            ms, _all = exec_to_ready(binary, store, work, settings, env, args.exec_rounds)
            table.add("exec -> /healthz 200", store, ms, "ms", target=("figure", "<=", 50))

    part("terraform", terraform)
    part("get", get)
    part("write", write)
    part("history", history)
    part("memory", memory)
    part("exec", exec_ready)
    part("views", views)
    part("explore", explore)
    part("listing", listing)

    for sg in servers.values():
        sg.stop()

    built = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(os.stat(binary).st_mtime))
    header = (
        f"stategate bench: commit {commit}, {cores} cores, {profile} binary built {built}, "
        f"{'quick' if args.quick else 'full'} run "
        f"({args.resources} resources x {args.runs} runs, {args.duration:g}s loads, {args.mem_mib} MiB states), "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(table.render(header))
    if skipped:
        print("\nnot measured:")
        for s in skipped:
            print(f"  {s}")
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "commit": commit,
                "cores": cores,
                "binary": profile,
                "binary_built": built,
                "quick": args.quick,
                "resources": args.resources,
                "runs": args.runs,
                "duration_s": args.duration,
                "mem_mib": args.mem_mib,
                "stores": args.stores,
                "rows": table.rows,
                "not_measured": skipped,
            },
            indent=2,
        )
        + "\n"
    )
    log(f"results: {out}")


if __name__ == "__main__":
    try:
        main()
    finally:
        cleanup()
