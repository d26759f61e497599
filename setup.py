"""The one compiled piece: wsop.load._hot, the load generator's hot loops (optional).

Everything else is in pyproject.toml. Without a C compiler the build goes on without
it and the generator runs its pure Python twin (`wsop.load.hot`).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "wsop.load._hot",
            ["wsop/load/_hot.c"],
            optional=True,
            extra_compile_args=["-O2", "-Wall", "-Wno-unused-result"],
        )
    ]
)
