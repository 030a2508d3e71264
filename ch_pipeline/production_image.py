"""The production image's file system for ``prod-local``: what the Dockerfile COPYs, under ``<root>/image``.

Its listing is taken once the build is done, so ``changes()`` shows every file a service created or
changed in the image: in the real image all of it is root's and read-only for the runtime user, so
each is a write that fails there.
"""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import yaml

from ch_pipeline.compose_project import REPO_ROOT, Placement, dockerfile, image_env, on_this_machine
from ch_pipeline.processes import Child

VENV_BIN = Path(sys.executable).parent
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "target", "logs", "dbt_packages", "*.egg-info")


class ImageCopy:
    def __init__(self, root: Path) -> None:
        self.root = root
        self._listing: dict[str, int] = {}

    def build(self, service: dict, place: Placement, workdir: Path, logs: Path) -> Child:
        """What the Dockerfile COPYs (the instance and workspace config mapped) and its `dbt parse` step,
        started in the background (only the code server needs the manifest): wait for the returned child."""
        for op, arg in dockerfile():
            if op != "COPY":
                continue
            *sources, dest = [part for part in arg.split() if not part.startswith("--")]
            dest = re.sub(r"\$\{?(\w+)\}?", lambda m: image_env()[m.group(1)], dest)
            target = Path(on_this_machine(dest if dest.startswith("/") else f"/{workdir.relative_to(self.root)}/{dest}", service, place))
            for source in sources:
                to = target / Path(source).name if dest.endswith("/") or len(sources) > 1 else target
                to.parent.mkdir(parents=True, exist_ok=True)
                if (REPO_ROOT / source).is_dir():
                    shutil.copytree(REPO_ROOT / source, to, ignore=IGNORED)
                elif source.endswith(".yaml"):  # deploy/dagster.yaml, deploy/workspace.yaml
                    to.write_text(yaml.safe_dump(on_this_machine(yaml.safe_load((REPO_ROOT / source).read_text()), service, place)))
                else:
                    shutil.copyfile(REPO_ROOT / source, to)
        self._listing = self.listing()  # before any service runs
        target_arg = next(arg.split("=", 1)[1] for op, arg in dockerfile() if op == "ARG" and arg.startswith("DBT_TARGET="))
        env = {"PATH": f"{VENV_BIN}:/usr/bin:/bin", "HOME": str(self.root.parent / "tmp"), "DBT_TARGET": target_arg}
        argv = [str(VENV_BIN / "dbt"), "parse", "--profiles-dir", "."]
        return Child("image-dbt-parse", argv, env, cwd=workdir / "ch_dbt", log=logs / "image-dbt-parse.log").start()

    def built(self, folder: Path) -> None:
        """What the build wrote under ``folder`` (its dbt parse) is part of the image."""
        prefix = f"{folder.relative_to(self.root)}/"
        self._listing.update({p: m for p, m in self.listing().items() if p.startswith(prefix)})

    def listing(self) -> dict[str, int]:
        listing = {}
        for path in self.root.rglob("*"):
            try:
                listing[str(path.relative_to(self.root))] = path.stat().st_mtime_ns if path.is_file() else 0
            except FileNotFoundError:  # removed meanwhile
                pass
        return listing

    def changes(self) -> set[str]:
        """What the services created or changed in the image since it was built."""
        return {path for path, mtime in self.listing().items() if self._listing.get(path) != mtime}
