"""Benchmarking a bundle on a device over SSH (toolchain/stages/remote.py) against a real OpenSSH server.

The test starts its own sshd on 127.0.0.1 from a temporary folder (its own host key, port, authorized_keys);
the client trusts only that host key (a known_hosts file in the same folder) and logs in with a key made for
the test, as the current user. The "device" is this machine: the remote Python is this venv's (numpy +
onnxruntime), the remote folder a temporary one. Skipped, with the reason, where sshd is missing or cannot
start (`make test` installs openssh-server when it runs as root with apt-get).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from bundles_for_tests import write_tiny_bundle, write_tiny_model

from runtime_bench.__main__ import bench_settings
from runtime_bench.__main__ import build_parser as runtime_bench_parser
from runtime_bench.bundle import MANIFEST_NAME, sha256_file, write_bundle_manifest
from runtime_bench.errors import CheckFailed
from runtime_bench.settings import BenchSettings
from toolchain.cli import main
from toolchain.stages.remote import (
    BENCH_HASH_CHARS,
    Device,
    bench_on_device,
    bundle_files,
    bundle_hash,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SSHD = shutil.which("sshd") or "/usr/sbin/sshd"
PRIVSEP_MISSING = "Missing privilege separation directory: "
BENCH_ARGS = "--threads 1 --warmup-runs 2 --warmup-seconds 0 --min-runs 5 --min-seconds 0.05"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
START_TIMEOUT_S = 10


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Every process below `pid`: sshd serves each connection in child processes of the listener."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue  # gone meanwhile
        children.setdefault(parent, []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _wait_for(path: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while not path.exists():
        assert time.monotonic() < deadline, f"{path} never arrived on the device"
        time.sleep(0.01)


class SSHServer:
    """An sshd of our own on 127.0.0.1, and the client options that trust it and log into it."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.port, self.process = folder, _free_port(), None
        self.host_key, self.user_key = folder / "host_key", folder / "user_key"
        for key in (self.host_key, self.user_key):
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "edgeprune-test", "-f", str(key)],
                           check=True, capture_output=True)
        (folder / "authorized_keys").write_text(self.user_key.with_suffix(".pub").read_text())
        self.known_hosts = folder / "known_hosts"
        self.known_hosts.write_text(f"[127.0.0.1]:{self.port} {self.host_key.with_suffix('.pub').read_text()}")
        self.config = folder / "sshd_config"
        self.config.write_text("\n".join([
            f"Port {self.port}", "ListenAddress 127.0.0.1", f"HostKey {self.host_key}",
            f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
            "StrictModes no", "UsePAM no", "PasswordAuthentication no", "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes", "PermitRootLogin prohibit-password", "PrintMotd no", "LogLevel ERROR", "",
        ]))  # fmt: skip
        self.device = f"{pwd.getpwuid(os.getuid()).pw_name}@127.0.0.1:{self.port}"
        self.log = folder / "sshd.log"

    def ssh_options(self) -> list[str]:
        return [f"UserKnownHostsFile={self.known_hosts}", "GlobalKnownHostsFile=/dev/null",
                "StrictHostKeyChecking=yes", f"IdentityFile={self.user_key}", "IdentitiesOnly=yes"]

    def _check_config(self) -> None:
        checked = subprocess.run([SSHD, "-t", "-f", str(self.config)], capture_output=True, text=True)
        message = checked.stderr.strip().splitlines()[-1] if checked.stderr.strip() else ""
        if checked.returncode != 0 and message.startswith(PRIVSEP_MISSING) and os.getuid() == 0:
            os.makedirs(message[len(PRIVSEP_MISSING):], mode=0o755, exist_ok=True)  # what the package's unit does
            return self._check_config()
        if checked.returncode != 0:
            raise RuntimeError(message or f"sshd -t exited {checked.returncode}")

    def start(self) -> None:
        self._check_config()
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config)], stdin=subprocess.DEVNULL,
                                            stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        deadline = time.monotonic() + START_TIMEOUT_S
        while True:
            if self.process.poll() is not None:
                lines = self.log.read_text(errors="replace").strip().splitlines()
                raise RuntimeError(lines[-1] if lines else f"sshd exited {self.process.returncode}")
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"sshd did not listen on port {self.port} within {START_TIMEOUT_S} s") from None
                time.sleep(0.05)

    def stop(self) -> None:
        """Kill the listener and every session it serves: to a client, a dropped connection."""
        if self.process is None:
            return
        for pid in _descendants(self.process.pid) + [self.process.pid]:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait()
        self.process = None


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    for tool in ("ssh", "ssh-keygen"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} not found (apt-get install openssh-client)")
    if not os.access(SSHD, os.X_OK):
        pytest.skip(f"{SSHD} not found (apt-get install openssh-server; make test does it as root)")
    sshd = SSHServer(tmp_path_factory.mktemp("sshd"))
    try:
        sshd.start()
    except RuntimeError as exc:
        pytest.skip(f"sshd cannot start here: {exc}")
    yield sshd
    sshd.stop()


def _tiny_out(tmp_path: Path) -> tuple[Path, Path]:
    out = tmp_path / "out"
    return out, write_tiny_bundle(out / "bundle", with_runtime_bench=True)


def _remote_files(folder: Path) -> dict[str, str]:
    return {p.relative_to(folder).as_posix(): sha256_file(p) for p in folder.rglob("*")
            if p.is_file() and "__pycache__" not in p.parts and p.name != "bench.json"}


# ------------------------------------------------------------------------------------------- offline


def test_bundle_hash_ignores_the_manifest_time_but_not_the_content(tmp_path):
    bundle = write_tiny_bundle(tmp_path / "bundle", with_runtime_bench=True)
    files = bundle_files(bundle)
    assert list(files)[:3] == ["dense.onnx", "model.onnx", "eval.npz"] and list(files)[-1] == MANIFEST_NAME
    assert "runtime_bench/__main__.py" in files and not any("__pycache__" in name for name in files)
    before = bundle_hash(bundle, files)

    manifest = json.loads((bundle / MANIFEST_NAME).read_text())
    manifest["created_utc"] = "2000-01-01T00:00:00Z"  # what a rebuilt bundle changes
    (bundle / MANIFEST_NAME).write_text(json.dumps(manifest))
    assert bundle_hash(bundle, bundle_files(bundle)) == before

    write_tiny_model(bundle / "model.onnx", seed=9)
    write_bundle_manifest(bundle, {"dense": "dense.onnx", "pruned": "model.onnx"}, manifest["input"])
    assert bundle_hash(bundle, bundle_files(bundle)) != before


def test_deploy_bench_settings_become_runtime_bench_options():
    settings = BenchSettings(batch_size=2, min_runs=7, min_seconds=5.0, warmup_seconds=0.0, strict=False, blocks=3)
    args = settings.cli_args()  # only what differs from the defaults the device has too
    assert args == ["--batch-size", "2", "--warmup-seconds", "0.0", "--min-runs", "7", "--min-seconds", "5.0",
                    "--blocks", "3"]
    parsed = runtime_bench_parser().parse_args([".", *args])  # the names runtime_bench really has
    assert bench_settings(parsed) == settings
    assert BenchSettings(strict=True).cli_args() == ["--strict"]
    assert bench_settings(runtime_bench_parser().parse_args(["."])) == BenchSettings()


@pytest.mark.parametrize("flags, message", [
    (["--device", "-oProxyCommand=touch x"],
     "--device '-oProxyCommand=touch x': expected HOST, USER@HOST or USER@HOST:PORT"),
    (["--device", "me@host:70000"], "--device 'me@host:70000': expected HOST, USER@HOST or USER@HOST:PORT"),
    (["--device", "me@host", "--ssh-option", "IdentityFile"],
     "--ssh-option 'IdentityFile': expected KEY=VALUE, e.g. IdentityFile=~/.ssh/id_device"),
    (["--device", "me@host", "--bench-args", "--min-runs 5 --json x.json"],
     "bench option --json: set by the remote run itself (the report comes back to OUT/device/HOST/bench.json)"),
])  # fmt: skip
def test_bad_device_options_fail_before_connecting(tmp_path, capsys, flags, message):
    out, _ = _tiny_out(tmp_path)
    assert main(["--quiet", "remote-bench", str(out), *flags]) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
    assert not (out / "device").exists()


@pytest.mark.parametrize("flags, message", [
    (["--device", "me@"], "--device 'me@': expected HOST, USER@HOST or USER@HOST:PORT"),
    (["--ssh-option", "Port=2222", "--rerun"], "--ssh-option, --rerun: only used with --device"),
])  # fmt: skip
def test_deploy_checks_device_options_before_any_work(tmp_path, capsys, flags, message):
    out = tmp_path / "out"
    argv = ["--quiet", "deploy", "--config", str(REPO_ROOT / "configs" / "default.yaml"), "--out", str(out), *flags]
    assert main(argv) == 2
    assert capsys.readouterr().err.splitlines() == [f"error: {message}"]
    assert not out.exists()


def test_unreachable_device_is_one_line_and_exit_3(tmp_path):
    if shutil.which("ssh") is None:
        pytest.skip("ssh not found (apt-get install openssh-client)")
    out, _ = _tiny_out(tmp_path)
    port = _free_port()  # nothing listens there
    device = f"root@127.0.0.1:{port}"
    done = subprocess.run([sys.executable, "-m", "toolchain", "--quiet", "remote-bench", str(out), "--device", device],
                          env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)), capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stderr.splitlines() == [
        f"error: {device}: cannot connect (connect to host 127.0.0.1 port {port}: Connection refused)"
    ]
    assert not (out / "device").exists()


# ------------------------------------------------------------------------------------------- with sshd


def test_round_trip_then_fetch_then_rerun(server, tmp_path, capsys):
    out, bundle = _tiny_out(tmp_path)
    remote = tmp_path / "device-home"
    files = bundle_files(bundle)
    folder = remote / bundle_hash(bundle, files)[:BENCH_HASH_CHARS]
    argv = ["--quiet", "remote-bench", str(out), "--device", server.device, "--remote-python", sys.executable,
            "--remote-dir", str(remote), "--bench-args", BENCH_ARGS]
    for option in server.ssh_options():
        argv += ["--ssh-option", option]

    assert main(argv) == 0, capsys.readouterr().err
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{server.device}: bundle {folder.name} in {folder}: sent {len(files)} files (0 were there), " \
                       "measured there"
    assert _remote_files(folder) == files  # every file arrived intact, nothing else did
    results = out / "device" / "127.0.0.1"
    assert lines[-1] == f"wrote {results / 'bench.json'}, bench.md, bench.png"
    assert (results / "bench.json").read_bytes() == (folder / "bench.json").read_bytes()
    report = json.loads((results / "bench.json").read_text())
    assert list(report["models"]) == ["dense", "pruned"] and report["settings"]["threads"] == 1
    assert report["settings"]["bundle"]["models"]["pruned"]["sha256"] == files["model.onnx"]
    assert all(m["latency"]["count"] >= 5 and m["accuracy"]["count"] == 12 for m in report["models"].values())
    assert "| pruned |" in (results / "bench.md").read_text()
    png = (results / "bench.png").read_bytes()
    assert png.startswith(PNG_SIGNATURE) and len(png) > 10_000

    measured_at = (folder / "bench.json").stat().st_mtime_ns
    assert main(argv) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{server.device}: bundle {folder.name} in {folder}: fetched the finished result of this bundle "
        "(--rerun measures again)")
    assert (folder / "bench.json").stat().st_mtime_ns == measured_at

    assert main(argv + ["--rerun"]) == 0, capsys.readouterr().err
    assert capsys.readouterr().out.splitlines()[0] == (
        f"{server.device}: bundle {folder.name} in {folder}: sent 0 files ({len(files)} were there), measured there")
    assert (folder / "bench.json").stat().st_mtime_ns != measured_at
    assert (results / "bench.json").read_bytes() == (folder / "bench.json").read_bytes()


def test_a_dropped_copy_resumes_without_sending_finished_files_again(server, tmp_path):
    out, bundle = _tiny_out(tmp_path)
    remote = tmp_path / "device-home"
    files = bundle_files(bundle)
    folder = remote / bundle_hash(bundle, files)[:BENCH_HASH_CHARS]
    first, second = list(files)[:2]
    device = Device.parse(server.device)
    options = dict(ssh_options=server.ssh_options(), python=sys.executable, remote_dir=str(remote),
                   bench_args=BENCH_ARGS.split())

    def drop_before_the_second_file(line: str) -> None:
        if line.startswith(f"sending {second} "):
            _wait_for(folder / first)  # there only once complete: renamed after its sha256 matched
            server.stop()

    with pytest.raises(CheckFailed) as info:
        bench_on_device(bundle, device, out / "device", progress=drop_before_the_second_file, **options)
    assert str(info.value) == (
        f"{server.device}: connection lost while copying the bundle (ssh exit 255); rerun to resume")
    assert info.value.exit_code == 3
    assert sorted(p.name for p in folder.iterdir()) == [first]
    assert not (out / "device").exists()
    copied = (folder / first).stat()

    server.start()
    result = bench_on_device(bundle, device, out / "device", **options)
    assert result["kept"] == [first] and result["sent"] == list(files)[1:] and result["measured"]
    again = (folder / first).stat()
    assert (again.st_ino, again.st_mtime_ns) == (copied.st_ino, copied.st_mtime_ns)  # not written again
    assert _remote_files(folder) == files
    assert json.loads(result["json"].read_text())["settings"]["bundle"]["models"]["dense"]["sha256"] == files[first]
