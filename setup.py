"""The compiled data plane (src/ipcproxy/dbus/_plane.c); everything else is declared in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipcproxy.dbus._plane",
            sources=["src/ipcproxy/dbus/_plane.c", "src/ipcproxy/dbus/_args.c"],
            depends=["src/ipcproxy/dbus/_args.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
        )
    ]
)
