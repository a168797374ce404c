"""Build the compiled hot paths: src_pyx/<package>/_<name>.pyx becomes engine.<package>._<name>.

Cython runs at build time (it is in [build-system].requires), so a fresh clone
builds with `pip install .` and nothing generated is kept in git.
Set ENGINE_CYTHON_TRACE=1 to build with line tracing for profilers.
"""

import os
from pathlib import Path

from Cython.Build import cythonize
from setuptools import Extension, setup

TRACE = os.environ.get("ENGINE_CYTHON_TRACE") == "1"

DIRECTIVES = {
    "language_level": 3,
    "embedsignature": True,
    "boundscheck": False,
    "wraparound": False,
    "cdivision": True,
    "linetrace": TRACE,
    "profile": TRACE,
}

# Every src_pyx/<package>/<name>.pyx builds engine.<package>.<name>: the
# compiled module's source is found by the same path as its package.
SOURCES = sorted(Path("src_pyx").rglob("*.pyx"))



def cython_include() -> str:
    """A directory in which `engine/<package>/<name>.pxd` is src_pyx's file.

    A module that `cimport`s another names it by its package path
    (`from engine.delivery._batch cimport ...`); Cython looks that up as
    `engine/delivery/_batch.pxd` on its include path, and the sources live in
    src_pyx/, so the include directory holds one link: engine -> src_pyx.
    """
    root = Path("build", "cython-include")
    link = root / "engine"
    root.mkdir(parents=True, exist_ok=True)
    if not link.is_symlink():
        link.symlink_to(Path("..", "..", "src_pyx"))
    return str(root)


extensions = [
    Extension(
        ".".join(("engine", *source.relative_to("src_pyx").with_suffix("").parts)),
        [str(source)],
        define_macros=[("CYTHON_TRACE", "1")] if TRACE else [],
        extra_compile_args=["-O2"],
    )
    for source in SOURCES
]

setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives=DIRECTIVES,
        include_path=[cython_include()],
        quiet=True,
    )
)
