"""Build the compiled hot paths: every module in src_pyx/ becomes engine._<name>.

Cython runs at build time (it is in [build-system].requires), so a fresh clone
builds with `pip install .` and nothing generated is kept in git.
Set ENGINE_CYTHON_TRACE=1 to build with line tracing for profilers.
"""

import os

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

MODULES = [
    "_channels",  # channel name validation and the subscription trie
    "_batch",  # splicing encoded messages into one HTTP / JSONP response
    "_wsframe",  # RFC 6455 frame codec
    "_http",  # httptools callbacks, the Bayeux POST, batched in-order writes
    "_sessions",  # sessions, the timer wheel, heartbeats and delivery (the core's hot half)
]

extensions = [
    Extension(
        f"engine.{name}",
        [f"src_pyx/{name}.pyx"],
        define_macros=[("CYTHON_TRACE", "1")] if TRACE else [],
        extra_compile_args=["-O2"],
    )
    for name in MODULES
]

setup(ext_modules=cythonize(extensions, compiler_directives=DIRECTIVES, quiet=True))
