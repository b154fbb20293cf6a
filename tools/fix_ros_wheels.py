"""Repoint the CMake exports of the ROS 2 PyPI wheels at this environment.

Each message wheel's ``export_<pkg>__rosidl_generator_pyExport.cmake`` names
the Python and numpy include directories of the machine that built the
wheel (``/opt/python/cp311-cp311/...``); configuring a package that depends
on those messages fails until they point at this interpreter's own.
Idempotent: run it again after installing more message wheels.
"""

import glob
import sys
import sysconfig

import numpy

BUILD_PREFIX = "/opt/python/cp311-cp311"


def main() -> int:
    replacements = {
        BUILD_PREFIX + "/include/python3.11": sysconfig.get_paths()["include"],
        BUILD_PREFIX + "/lib/python3.11/site-packages/numpy/_core/include": numpy.get_include(),
    }
    changed = 0
    for path in glob.glob(sys.prefix + "/share/**/*.cmake", recursive=True):
        with open(path) as f:
            text = original = f.read()
        for old, new in replacements.items():
            text = text.replace(old, new)
        if text != original:
            with open(path, "w") as f:
                f.write(text)
            changed += 1
    print(f"fix_ros_wheels: rewrote {changed} CMake file(s) under {sys.prefix}/share")
    return 0


if __name__ == "__main__":
    sys.exit(main())
