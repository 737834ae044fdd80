"""The compiled parts (the D-Bus data plane, the syscall tracer's stop loop, the eBPF watcher); everything else is in pyproject.toml.

The eBPF program (src/ipcproxy/ebpf/watch.bpf.c) is compiled here with
``clang -target bpf`` against a vmlinux.h that bpftool dumps from this
machine's kernel BTF (/sys/kernel/btf/vmlinux): CO-RE relocations let the
object load on other kernels too. Without clang, bpftool or BTF the rest
installs and ``ipcproxy watch`` says what was missing.
"""

import os
import shutil
import subprocess
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = os.path.dirname(os.path.abspath(__file__))
EBPF = os.path.join(HERE, "src", "ipcproxy", "ebpf")
BTF = "/sys/kernel/btf/vmlinux"


def build_bpf(out_dir: str) -> None:
    """watch.bpf.o into ``out_dir``, or a note of what is missing (read by ``ipcproxy watch``)."""
    obj = os.path.join(out_dir, "watch.bpf.o")
    missing_note = os.path.join(out_dir, "watch.bpf.missing")
    missing = [tool for tool in ("clang", "bpftool") if shutil.which(tool) is None]
    if not os.path.exists(BTF):
        missing.append(f"kernel BTF ({BTF})")
    if not os.path.exists("/usr/include/bpf/bpf_helpers.h"):
        missing.append("libbpf headers (libbpf-dev)")
    if missing:
        with open(missing_note, "w") as f:
            f.write(", ".join(missing) + "\n")
        print(f"ipcproxy: not building the eBPF program: missing {', '.join(missing)}", file=sys.stderr)
        return
    gen = os.path.join(HERE, "build", "ebpf")
    os.makedirs(gen, exist_ok=True)
    vmlinux = os.path.join(gen, "vmlinux.h")
    with open(vmlinux + ".tmp", "wb") as f:
        subprocess.run(["bpftool", "btf", "dump", "file", BTF, "format", "c"], stdout=f, check=True)
    os.replace(vmlinux + ".tmp", vmlinux)
    subprocess.run(
        ["clang", "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", "-I", gen, "-Wall", "-Wno-unused-function",
         "-c", os.path.join(EBPF, "watch.bpf.c"), "-o", obj + ".tmp"],
        check=True,
    )
    os.replace(obj + ".tmp", obj)
    if os.path.exists(missing_note):
        os.unlink(missing_note)


class BuildWithBpf(build_ext):
    def run(self) -> None:
        build_bpf(EBPF)  # beside its source: an editable install runs from there
        if not self.inplace:
            target = os.path.join(self.build_lib, "ipcproxy", "ebpf")
            os.makedirs(target, exist_ok=True)
            for name in ("watch.bpf.o", "watch.bpf.missing"):
                if os.path.exists(os.path.join(EBPF, name)):
                    shutil.copy2(os.path.join(EBPF, name), target)
        super().run()


setup(
    cmdclass={"build_ext": BuildWithBpf},
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
        Extension(
            "ipcproxy.ebpf._ring",
            sources=["src/ipcproxy/ebpf/_ring.c"],
            libraries=["bpf"],
            extra_compile_args=["-O2", "-std=gnu11", "-Wall"],
            optional=True,  # without libbpf-dev the rest installs; `ipcproxy watch` says what is missing
        ),
    ],
)
