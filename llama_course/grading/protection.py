"""What keeps the student's code away from the grader: a scrubbed environment, no process left behind, and a
check that the grader's own files did not change.

The notebook and the student's functions run as the same user as the grader, so they can write any file the
grader can. The test worker loads the checks before any student code runs, so a change cannot alter the run
that made it; the grader fingerprints its code and checks (`llama_course/grading`) before the notebook starts
and refuses to grade a notebook during whose run they changed, naming the files. It never writes them back
itself (a developer may be editing them); a course keeps later runs safe by grading each submission in a
fresh container or as a user that cannot write the installation, as book/grading.md says.
"""

import ctypes
import hashlib
import os
import signal
import sys
from pathlib import Path

# Variables the kernel and the test processes keep; every other one of the grader's (tokens, LMS keys) is dropped.
KEPT_VARIABLES = ("PATH", "HOME", "LANG", "LANGUAGE", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "OMP_NUM_THREADS",
                  "MKL_NUM_THREADS", "MPLBACKEND", "MPLCONFIGDIR", "XDG_CACHE_HOME", "XDG_CONFIG_HOME",
                  "XDG_DATA_HOME", "XDG_RUNTIME_DIR", "VIRTUAL_ENV")
PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # the folder holding this `llama_course`
GRADING_DIR = Path(__file__).resolve().parent


def scrubbed_environment(*paths: Path) -> dict[str, str]:
    """The environment for student code: the kept variables, this package (then `paths`) first on the path, no
    bytecode writes."""
    env = {name: os.environ[name] for name in KEPT_VARIABLES if name in os.environ}
    python_path = os.pathsep.join(dict.fromkeys(str(path) for path in (PACKAGE_ROOT, *paths)))
    env.update(PYTHONPATH=python_path, PYTHONDONTWRITEBYTECODE="1", PYTHONNOUSERSITE="1")
    return env


def make_undumpable() -> None:
    """Linux: other processes of the same (non-root) user can no longer read this one's memory or environment."""
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE = 4


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir() if Path("/proc").is_dir() else []:
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue  # not a process, or it ended meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def kill_process_tree(pid: int) -> None:
    """SIGKILL `pid`, its process group and every descendant still attached to it (Linux: found in /proc).
    `pid` must be a child of this process that is not reaped yet, so that it cannot name another process."""
    children, tree, queue = _children(), [], [pid]
    while queue:
        current = queue.pop()
        tree.append(current)
        queue += children.get(current, [])
    for target in tree:
        for kill in (os.killpg, os.kill):
            try:
                kill(target, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass


class GraderFiles:
    """A fingerprint of the grader's files (code, checks, bytecode) taken before the notebook runs."""

    def __init__(self, root: Path = GRADING_DIR) -> None:
        self.root = root
        self.files = self._read()

    def _read(self) -> dict[Path, bytes | None]:
        files: dict[Path, bytes | None] = {}
        for path in self.root.rglob("*"):
            if path.is_symlink() or path.is_file():
                try:
                    files[path] = None if path.is_symlink() else hashlib.sha256(path.read_bytes()).digest()
                except OSError:  # made unreadable
                    files[path] = None
        return files

    def changed(self) -> list[str]:
        """The files changed, added or removed since the fingerprint. Bytecode counts only where it changed while
        its source did not (Python rewrites it after an edit, and writes it for a module compiled the first
        time)."""
        current = self._read()
        changed = {path for path in current.keys() | self.files.keys() if current.get(path) != self.files.get(path)}
        sources = {path.stem.split(".")[0] for path in changed if path.suffix != ".pyc"}
        return sorted(str(path.relative_to(self.root.parents[1])) for path in changed
                      if path.suffix != ".pyc" or (path in self.files and path.stem.split(".")[0] not in sources))
