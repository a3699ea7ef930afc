"""Build the Cython core. Everything else is declared in pyproject.toml."""
from Cython.Build import cythonize
from setuptools import Extension, setup

setup(
    ext_modules=cythonize(
        [Extension("fastpool._core", ["src/fastpool/_core.pyx"])],
        compiler_directives={
            "language_level": 3,
            # The ring's invariants are enforced explicitly; these checks only cost time on the hot path.
            "boundscheck": False,
            "wraparound": False,
            "initializedcheck": False,
            "cdivision": True,
        },
    ),
)
