"""Build hook: compiles every Cython module under vmm/_fast and devices/.

Extensions are discovered, not listed, so adding a hot path is adding a .pyx file.
"""
from pathlib import Path

from setuptools import setup

ROOT = Path(__file__).parent


def cython_extensions():
    sources = sorted(
        p for top in ("vmm", "devices") for p in (ROOT / top).rglob("*.pyx")
    )
    if not sources:
        return []
    from Cython.Build import cythonize
    from setuptools import Extension

    exts = [
        Extension(
            ".".join(p.relative_to(ROOT).with_suffix("").parts),
            [str(p.relative_to(ROOT))],
            extra_compile_args=["-O2"],
        )
        for p in sources
    ]
    # Bounds-check directives are set per file: guest-facing code keeps its checks explicit.
    return cythonize(exts, compiler_directives={"language_level": 3})


setup(ext_modules=cython_extensions())
