"""Filesystem and CLI helpers: atomic writes, one-line errors at the CLI boundary."""
import contextlib
import os
import sys
import tempfile

from utils.errors import ThreeDSRError


@contextlib.contextmanager
def atomic_write(path, mode="wb"):
    """Open a temp file beside `path`; rename it onto `path` only if the block succeeds.

    A crash or an exception leaves any previous `path` untouched and no partial file behind.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    os.chmod(tmp, default_file_mode())  # mkstemp makes 0600; give the file the usual permissions
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise


def default_file_mode() -> int:
    """The permissions a new file gets here: 0o666 less the process umask."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def file_sha256(path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB blocks."""
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_root():
    """The project's cache folder for converted weights and data: `$THREEDSR_CACHE` if set, else
    `~/.cache/3dsr`."""
    env = os.environ.get("THREEDSR_CACHE")
    if env:
        return os.path.abspath(os.path.expanduser(env))
    return os.path.join(os.path.expanduser("~"), ".cache", "3dsr")


def proc_status_kib(field):
    """A memory field of /proc/self/status (e.g. "VmRSS", "VmHWM") in KiB, or None where there is none."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def mkdir_p(path):
    os.makedirs(path, exist_ok=True)


def run_cli(main, argv=None):
    """Run `main(argv)`; turn a ThreeDSRError into one line on stderr and exit code 2."""
    try:
        return main(argv)
    except ThreeDSRError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
