"""Putting back what a failed stage had. DVC removes a stage's outputs before it runs the
stage, so a stage that stops on bad params or bad data would leave the workspace without its
metrics, DVCLive logs and models (`git status` showing them deleted). On failure, a stage run by
DVC puts back each output dvc.lock records and the workspace lacks: a cached one from DVC's cache
by its MD5, a git-tracked one from git's HEAD."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any


def restore_outputs() -> list[str]:
    """The outputs of the stage DVC is running (DVC_STAGE, in DVC_ROOT) that were put back."""
    stage, root = os.environ.get("DVC_STAGE"), os.environ.get("DVC_ROOT")
    lock = Path(root or ".") / "dvc.lock"
    if not stage or not root or not lock.is_file():
        return []  # not run by DVC: nothing was removed
    import yaml

    outs = (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages", {}).get(
        stage, {}).get("outs", [])
    missing = [out for out in outs if not (Path(root) / out["path"]).exists()]
    if not missing:
        return []
    cache = cache_files(Path(root))
    return [out["path"] for out in missing
            if from_cache(Path(root), out, cache) or from_git(Path(root), out["path"])]


def cache_files(root: Path) -> Path | None:
    """Where DVC keeps file contents by MD5 (.dvc/cache/files/md5, or the configured cache)."""
    try:
        from dvc.repo import Repo

        with Repo(str(root)) as repo:
            return Path(repo.cache.local.path)
    except Exception:  # noqa: BLE001 - no DVC repository, or none readable: git may still help
        return None


def cached(cache: Path, md5: str) -> Path:
    return cache / md5[:2] / md5[2:]


def from_cache(root: Path, out: dict[str, Any], cache: Path | None) -> bool:
    """A cached output copied back from the cache (a directory through its .dir listing)."""
    md5 = out.get("md5")
    if cache is None or not md5 or not cached(cache, md5).is_file():
        return False
    target = root / out["path"]
    files = {target: md5}
    if md5.endswith(".dir"):
        listing = json.loads(cached(cache, md5).read_text(encoding="utf-8"))
        files = {target / entry["relpath"]: entry["md5"] for entry in listing}
    if not all(cached(cache, oid).is_file() for oid in files.values()):
        return False
    for path, oid in files.items():
        copy(cached(cache, oid), path)
    return True


def copy(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.restoring")
    shutil.copyfile(source, partial)
    partial.replace(target)


def from_git(root: Path, path: str) -> bool:
    """A git-tracked output (metrics: false cache) checked out from HEAD."""
    tracked = subprocess.run(["git", "ls-files", "--", path], cwd=root, capture_output=True,
                             text=True).stdout.strip()
    return bool(tracked) and subprocess.run(["git", "checkout", "HEAD", "--", path], cwd=root,
                                            capture_output=True).returncode == 0
