"""Benchmark a deploy bundle on a device over SSH: copy OUT/bundle there, run runtime_bench, fetch its report.

    edgeprune remote-bench OUT --device user@host[:port]     (or the last stage of: edgeprune deploy --device ...)

The system OpenSSH client does the work (`ssh` in BatchMode: it never asks for a password, so a key or an
agent must work), with the user's ~/.ssh/config and any `-o KEY=VALUE` options (IdentityFile,
UserKnownHostsFile, ...). The device needs Python >= 3.8 with numpy and an inference runtime; the bundle
carries runtime_bench itself. Small Python scripts sent as `python3 -c` arguments look at and write the
remote folder, so nothing but Python and a POSIX shell is assumed there.

The bundle goes to REMOTE_DIR/<bundle hash> (default ~/edgeprune/...). The hash covers every file that is
sent, leaving out the manifest's creation time, so a rebuilt but identical bundle lands in the same folder
and a rerun after a dropped connection resumes:
  - files already there with the right sha256 are not sent again (each file is written under a temporary
    name and renamed only once its sha256 matches, so a half-copied file is never taken for a whole one);
  - a finished result (bench.json, which runtime_bench writes atomically) is fetched instead of measuring
    again, unless `rerun`.
The report comes back as RESULTS/<host>/bench.json, and bench.md and bench.png are rendered here.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import json
import pathlib
import re
import shlex
import shutil
import subprocess
import tempfile
from typing import Callable, Sequence

from runtime_bench.atomic import write_text_atomic
from runtime_bench.bundle import DEFAULT_REPORT_NAME, MANIFEST_NAME, read_bundle, sha256_file
from runtime_bench.errors import CheckFailed, InputError
from runtime_bench.report import parse_report, to_markdown

from .report import plot_bench

DEFAULT_REMOTE_DIR = "~/edgeprune"
DEFAULT_PYTHON = "python3"
CONNECT_TIMEOUT_S = 10
# A dead link is noticed by ssh itself after ALIVE_INTERVAL_S x ALIVE_COUNT without an answer (exit 255);
# the benchmark's own duration is unbounded (a strict run takes over 10 minutes), so no overall timeout there.
ALIVE_INTERVAL_S = 10
ALIVE_COUNT = 3
ANSWER_TIMEOUT_S = 120  # looking into the remote folder, fetching the report
SSH_FAILED = 255  # ssh's own exit status for a connection or authentication failure
COMMAND_NOT_FOUND = 127  # the remote shell's, when the Python given does not exist there
BENCH_HASH_CHARS = 16
CONNECT = "connecting"
RESULT_FILES = {"json": DEFAULT_REPORT_NAME, "markdown": "bench.md", "png": "bench.png"}
# Output options of runtime_bench that remote benchmarking sets itself.
RESERVED_BENCH_OPTIONS = ("--json", "--md", "--data")

_NAME = r"[A-Za-z0-9_][A-Za-z0-9._-]*"  # never starts with "-": a host must not read as an ssh option
_DEVICE = re.compile(rf"^(?:(?P<user>{_NAME})@)?(?P<host>{_NAME})(?::(?P<port>[0-9]{{1,5}}))?$")

# Runs on the device: sha256 of every file under the folder, and the Python version.
PROBE_SCRIPT = """\
import hashlib, json, os, sys
folder, found = sys.argv[1], {}
for root, dirs, names in os.walk(folder):
    dirs[:] = [d for d in dirs if d != "__pycache__"]
    for name in names:
        path = os.path.join(root, name)
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        found[os.path.relpath(path, folder).replace(os.sep, "/")] = digest.hexdigest()
print(json.dumps({"python": list(sys.version_info[:3]), "files": found}))
"""

# Runs on the device: reads {"name", "size", "sha256"} header lines each followed by the file's bytes,
# writes each file under NAME.part and renames it once its sha256 matches.
RECEIVE_SCRIPT = """\
import hashlib, json, os, sys
folder, source = sys.argv[1], sys.stdin.buffer
while True:
    header = source.readline()
    if not header:
        break
    entry = json.loads(header.decode("utf-8"))
    path = os.path.join(folder, *entry["name"].split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    part, digest, left = path + ".part", hashlib.sha256(), entry["size"]
    with open(part, "wb") as handle:
        while left:
            block = source.read(min(left, 1 << 20))
            if not block:
                sys.exit("the input ended inside " + entry["name"])
            handle.write(block)
            digest.update(block)
            left -= len(block)
    if digest.hexdigest() != entry["sha256"]:
        sys.exit(entry["name"] + ": sha256 differs after copying")
    os.replace(part, path)
"""


@dataclasses.dataclass(frozen=True)
class Device:
    """`[user@]host[:port]`; the host may be an alias from ~/.ssh/config."""

    spec: str
    user: str | None
    host: str
    port: int | None

    @classmethod
    def parse(cls, spec: str) -> Device:
        match = _DEVICE.match(spec)
        port = int(match["port"]) if match and match["port"] else None
        if match is None or (port is not None and not 0 < port < 65536):
            raise InputError(f"--device {spec!r}: expected HOST, USER@HOST or USER@HOST:PORT")
        return cls(spec, match["user"], match["host"], port)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def __str__(self) -> str:
        return self.spec


def check_ssh_options(options: Sequence[str]) -> list[str]:
    """`KEY=VALUE` options for ssh's `-o` (checked here so that a typo fails before any work)."""
    for option in options:
        key, _, value = option.partition("=")
        if not re.fullmatch(r"[A-Za-z]+", key) or not value:
            raise InputError(f"--ssh-option {option!r}: expected KEY=VALUE, e.g. IdentityFile=~/.ssh/id_device")
    return list(options)


def check_bench_args(args: Sequence[str]) -> list[str]:
    """Extra `python -m runtime_bench` options for the device run, without the outputs it sets itself."""
    for arg in args:
        if arg.split("=", 1)[0] in RESERVED_BENCH_OPTIONS:
            raise InputError(f"bench option {arg}: set by the remote run itself (the report comes back to "
                             f"OUT/device/HOST/{DEFAULT_REPORT_NAME})")
    return list(args)


def bundle_files(bundle_dir: pathlib.Path) -> dict[str, str]:
    """Relative path -> sha256 of every file the device needs, in sending order: the models and the
    evaluation data (the bulk, hashes from the verified manifest), runtime_bench, the manifest last."""
    bundle = read_bundle(bundle_dir, verify=True)
    files = {entry["file"]: entry["sha256"] for entry in bundle["models"]}
    files[bundle["eval"]["file"]] = bundle["eval"].get("sha256") or sha256_file(bundle["eval"]["path"])
    package = bundle_dir / "runtime_bench"
    if package.is_dir():  # else the device must have runtime_bench installed
        for path in sorted(package.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                files[path.relative_to(bundle_dir).as_posix()] = sha256_file(path)
    files[MANIFEST_NAME] = sha256_file(bundle["manifest_path"])
    return files


def bundle_hash(bundle_dir: pathlib.Path, files: dict[str, str]) -> str:
    """Content hash of what is sent, without the manifest's creation time (a rebuilt bundle keeps it)."""
    manifest = json.loads((bundle_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    manifest.pop("created_utc", None)
    lines = [f"{name} {sha}" for name, sha in sorted(files.items()) if name != MANIFEST_NAME]
    lines.append(f"{MANIFEST_NAME} {json.dumps(manifest, sort_keys=True)}")
    return hashlib.sha256("\n".join(lines).encode("utf-8")).hexdigest()


def remote_folder(remote_dir: str, digest: str) -> str:
    """The bundle's folder on the device; `~/` prefixes become paths relative to the login folder,
    which is where ssh runs commands (a quoted `~` would not expand)."""
    base = remote_dir.strip()
    if not base or "\n" in base:
        raise InputError(f"--remote-dir {remote_dir!r}: expected a folder on the device")
    if base in ("~", "~/"):
        base = "."
    elif base.startswith("~/"):
        base = base[2:]
    return f"{base.rstrip('/')}/{digest[:BENCH_HASH_CHARS]}"


def _shown(folder: str) -> str:
    """A remote path as a user reads it: relative ones are in the login folder."""
    if folder.startswith("/"):
        return folder
    return "~/" + (folder[2:] if folder.startswith("./") else folder)


def _size(count: int) -> str:
    return f"{count / 1e6:.1f} MB" if count >= 1e6 else f"{count / 1e3:.1f} kB"


def _last_line(stderr: bytes | str) -> str:
    text = stderr.decode("utf-8", "replace") if isinstance(stderr, bytes) else stderr
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1] if lines else ""


class SSH:
    """Commands on one device through the system ssh client, with its failures as one-line errors."""

    def __init__(self, device: Device, options: Sequence[str] = ()) -> None:
        executable = shutil.which("ssh")
        if executable is None:
            raise InputError("ssh: no OpenSSH client found on this machine (install openssh-client)")
        self.device = device
        # ssh keeps the first value it gets for an option: the user's options go before our defaults.
        self.base = [executable]
        for option in list(options) + ["BatchMode=yes", f"ConnectTimeout={CONNECT_TIMEOUT_S}",
                                       f"ServerAliveInterval={ALIVE_INTERVAL_S}",
                                       f"ServerAliveCountMax={ALIVE_COUNT}", "LogLevel=ERROR"]:
            self.base += ["-o", option]
        if device.port is not None:
            self.base += ["-p", str(device.port)]
        self.base += ["--", device.destination]

    def transport_error(self, phase: str, why: str) -> CheckFailed:
        if phase == CONNECT:
            return CheckFailed(f"{self.device}: cannot connect ({why})")
        return CheckFailed(f"{self.device}: connection lost while {phase} ({why}); rerun to resume")

    def run(self, command: str, phase: str) -> subprocess.CompletedProcess:
        """Run a short remote command; a connection failure or no answer raises (exit code 3)."""
        try:
            done = subprocess.run(self.base + [command], stdin=subprocess.DEVNULL, capture_output=True,
                                  timeout=ANSWER_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            raise self.transport_error(phase, f"no answer within {ANSWER_TIMEOUT_S} s") from None
        if done.returncode == SSH_FAILED:
            reason = _last_line(done.stderr) if phase == CONNECT else ""
            if reason.startswith("ssh: "):
                reason = reason[len("ssh: "):]
            raise self.transport_error(phase, reason or f"ssh exit {SSH_FAILED}")
        return done

    def files_there(self, folder: str, python: str) -> dict[str, str]:
        """sha256 of each file already in `folder` on the device; also checks its Python."""
        done = self.run(f"{shlex.quote(python)} -c {shlex.quote(PROBE_SCRIPT)} {shlex.quote(folder)}", CONNECT)
        if done.returncode == COMMAND_NOT_FOUND:
            raise InputError(f"{self.device}: {python}: not found on the device (give --remote-python)")
        if done.returncode != 0:
            raise CheckFailed(f"{self.device}: looking into {_shown(folder)} failed ({_last_line(done.stderr)})")
        try:
            answer = json.loads(done.stdout.decode("utf-8", "replace").strip().splitlines()[-1])
            version, found = tuple(answer["python"]), dict(answer["files"])
        except (ValueError, IndexError, KeyError, TypeError):
            raise CheckFailed(f"{self.device}: {python} gave no readable answer (does a login script print "
                              "to stdout?)") from None
        if version < (3, 8):
            raise InputError(f"{self.device}: {python} is Python {'.'.join(map(str, version))}; runtime_bench "
                             "needs 3.8 or newer (give --remote-python)")
        return found

    def send(self, bundle_dir: pathlib.Path, files: dict[str, str], folder: str, python: str,
             progress: Callable[[str], None]) -> None:
        """Stream `files` (relative path -> sha256) into `folder` on the device, one connection for all."""
        command = f"{shlex.quote(python)} -c {shlex.quote(RECEIVE_SCRIPT)} {shlex.quote(folder)}"
        with tempfile.TemporaryFile() as errors:
            process = subprocess.Popen(self.base + [command], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                       stderr=errors)
            try:
                for name, sha in files.items():
                    path = bundle_dir / name
                    size = path.stat().st_size
                    progress(f"sending {name} ({_size(size)})")
                    header = json.dumps({"name": name, "size": size, "sha256": sha}) + "\n"
                    process.stdin.write(header.encode("utf-8"))
                    with open(path, "rb") as handle:
                        shutil.copyfileobj(handle, process.stdin, 1 << 20)
                    process.stdin.flush()  # each file complete on the device before the next starts
            except BrokenPipeError:
                pass  # the connection went; ssh's exit status below says so
            finally:
                with contextlib.suppress(BrokenPipeError):
                    process.stdin.close()
            code = process.wait()
            errors.seek(0)
            reason = _last_line(errors.read())
        if code == SSH_FAILED:
            raise self.transport_error("copying the bundle", f"ssh exit {SSH_FAILED}")
        if code != 0:
            raise CheckFailed(f"{self.device}: copying the bundle into {_shown(folder)} failed ({reason})")

    def bench(self, folder: str, python: str, bench_args: Sequence[str], rerun: bool,
              progress: Callable[[str], None]) -> None:
        """`python -m runtime_bench .` in `folder`, its progress lines passed on as they come."""
        command = f"cd {shlex.quote(folder)} && "
        if rerun:
            command += f"rm -f {DEFAULT_REPORT_NAME} && "
        command += " ".join(shlex.quote(a) for a in [python, "-m", "runtime_bench", ".", "--json",
                                                     DEFAULT_REPORT_NAME, *bench_args])
        process = subprocess.Popen(self.base + [command], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, text=True, errors="replace")
        tail: collections.deque = collections.deque(maxlen=20)
        for line in process.stderr:
            line = line.rstrip("\n")
            if line.startswith("[runtime_bench]"):
                progress(line)
            elif line.strip():
                tail.append(line.strip())
        code = process.wait()
        if code == 0:
            return
        if code == SSH_FAILED:
            raise self.transport_error("running the benchmark", f"ssh exit {SSH_FAILED}")
        errors = [line[len("error: "):] for line in tail if line.startswith("error: ")]
        if errors and code in (InputError.exit_code, CheckFailed.exit_code):
            error = InputError if code == InputError.exit_code else CheckFailed
            raise error(f"{self.device}: on the device: {errors[-1]}")
        last = tail[-1] if tail else "no message"
        raise CheckFailed(f"{self.device}: the benchmark failed on the device (exit {code}: {last})")

    def fetch(self, path: str) -> str:
        done = self.run(f"cat {shlex.quote(path)}", "fetching the result")
        if done.returncode != 0:
            raise CheckFailed(f"{self.device}: cannot read {_shown(path)} ({_last_line(done.stderr)})")
        return done.stdout.decode("utf-8", "replace")


def write_results(text: str, folder: pathlib.Path, source: str) -> dict:
    """A fetched report as folder/bench.json, with bench.md and bench.png; checked before anything is written."""
    report = parse_report(text, source)
    paths = {kind: folder / name for kind, name in RESULT_FILES.items()}
    folder.mkdir(parents=True, exist_ok=True)
    plot_bench(report, paths["png"], source)  # first: it checks that the report is complete
    write_text_atomic(to_markdown(report), paths["markdown"])
    write_text_atomic(text, paths["json"])
    return dict(paths, report=report)


def bench_on_device(bundle_dir: pathlib.Path, device: Device, results_dir: pathlib.Path, *,
                    ssh_options: Sequence[str] = (), python: str = DEFAULT_PYTHON,
                    remote_dir: str = DEFAULT_REMOTE_DIR, bench_args: Sequence[str] = (), rerun: bool = False,
                    progress: Callable[[str], None] | None = None) -> dict:
    """Copy the bundle to the device (only what is missing), benchmark it there (unless a finished result
    is there and not `rerun`), and write the report to results_dir/<host>/ (see the module docstring).

    Returns the written paths (json, markdown, png), the report, the remote folder, the bundle hash, the
    files sent and those already there, and whether it measured (False: fetched a finished result).
    """
    say = progress or (lambda line: None)
    files = bundle_files(bundle_dir)
    digest = bundle_hash(bundle_dir, files)
    folder = remote_folder(remote_dir, digest)
    ssh = SSH(device, check_ssh_options(ssh_options))
    bench_args = check_bench_args(bench_args)
    there = ssh.files_there(folder, python)
    missing = {name: sha for name, sha in files.items() if there.get(name) != sha}
    measured = rerun or DEFAULT_REPORT_NAME not in there
    if measured:
        if missing:
            total = sum((bundle_dir / name).stat().st_size for name in missing)
            say(f"{device}: copying {len(missing)} of {len(files)} files ({_size(total)}) to {_shown(folder)}")
            ssh.send(bundle_dir, missing, folder, python, say)
        say(f"{device}: running runtime_bench in {_shown(folder)}")
        ssh.bench(folder, python, bench_args, rerun, say)
    report_path = f"{folder}/{DEFAULT_REPORT_NAME}"
    text = ssh.fetch(report_path)
    written = write_results(text, results_dir / device.host, f"{device}:{_shown(report_path)}")
    return dict(written, remote_dir=_shown(folder), bundle_hash=digest, measured=measured,
                sent=list(missing) if measured else [], kept=[name for name in files if name not in missing])
