"""The syscall transport: pipes, FIFOs and sockets of an unmodified process tree, seen by ptrace + seccomp.

``_tracer`` (C) is the stop loop, ``events`` decodes its batches, ``channels``
keeps the fd → channel table and attributes reads to writes (sans-IO),
``procfs`` answers its questions about the live system, ``records`` and
``tracer`` turn it all into trace records (see docs/commands-syscall.md).
"""
