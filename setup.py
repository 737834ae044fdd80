"""The compiled parts (the D-Bus data plane, the syscall tracer's stop loop); everything else is in pyproject.toml."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "ipcproxy.dbus._plane",
            sources=["src/ipcproxy/dbus/_plane.c", "src/ipcproxy/dbus/_args.c"],
            depends=["src/ipcproxy/dbus/_args.h"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
        ),
        Extension(
            "ipcproxy.syscall._tracer",
            sources=["src/ipcproxy/syscall/_tracer.c"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
        ),
    ]
)
