"""Build: every pyx/<stage>.pyx becomes the extension module engine._<stage>, compiled -O3."""
import glob
import os

import numpy
from Cython.Build import cythonize
from setuptools import Extension, setup

HERE = os.path.dirname(os.path.abspath(__file__))


def extensions():
    # MMR_STAGES=parse,flowbase limits a developer's in-place build to those stages.
    only = {s for s in os.environ.get("MMR_STAGES", "").split(",") if s}
    exts = []
    for path in sorted(glob.glob(os.path.join("pyx", "*.pyx"))):
        stage = os.path.splitext(os.path.basename(path))[0]
        if only and stage not in only:
            continue
        exts.append(
            Extension(
                "engine._" + stage,
                [path],
                include_dirs=[numpy.get_include(), "pyx"],
                extra_compile_args=["-O3", "-fno-strict-aliasing", "-Wno-unused-function"],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
            )
        )
    return exts


setup(
    ext_modules=cythonize(
        extensions(),
        include_path=["pyx", "pyx/includes"],
        compiler_directives={
            "language_level": 3,
            "boundscheck": False,
            "wraparound": False,
            "cdivision": True,
            "initializedcheck": False,
        },
        build_dir="build/cython",
    ),
)
