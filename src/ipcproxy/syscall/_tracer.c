/* The syscall transport's compiled stop loop: ptrace + a seccomp filter, nothing else.
 *
 * Why compiled: every traced IPC syscall costs two ptrace stops (the seccomp stop at entry,
 * the syscall-exit stop; seccomp runs after the entry report, so resuming with PTRACE_SYSCALL
 * from the seccomp stop goes straight to the exit), and a Python loop around them was
 * several times slower than strace. Here a thread of its own (the loop thread, which is the
 * tracer in the kernel's eyes: it forks or attaches, and makes every ptrace call) services each
 * stop and resumes the tracee at once, without the GIL, appending compact binary events to a
 * buffer: one per IPC syscall (or per message of sendmmsg/recvmmsg), read at syscall exit when
 * the result is known, with the fd's inode and up to ``max_payload`` bytes of payload copied out
 * of the tracee with process_vm_readv. ``Tracer.wait`` hands Python what has accumulated, so
 * Python decodes and records in parallel while the programs run on; a program waits for Python
 * only when it lags by more than PENDING_LIMIT bytes (nothing is dropped). Decoding, channels,
 * attribution and records are Python's job (``ipcproxy.syscall.events``); this file makes no
 * decision about what to record.
 *
 * What each fd of a process is (inode, device, mode) is cached per process and forgotten when the
 * fd may change (close, dup2/dup3 onto it, a new fd from pipe/socket/accept/dup/fcntl/SCM_RIGHTS,
 * exec): a read or write then costs no /proc lookup. A data call on an fd that is not a pipe, FIFO
 * or socket (a file, a terminal) costs one stop: it is resumed at its seccomp stop, unreported.
 * ``close`` too is reported at its seccomp stop (its result does not matter to the channel table).
 *
 * The child installs a seccomp filter before exec: only the IPC syscalls (SYSCALLS below)
 * return SECCOMP_RET_TRACE, everything else runs without stopping, and syscalls of a
 * foreign architecture (a 32-bit or x32 program) are allowed, not killed.
 *
 * A seccomp filter cannot be removed: a program whose tracer went away gets ENOSYS from
 * every filtered syscall. ``record = False`` therefore stops reading and reporting but
 * keeps servicing the stops (the IPC syscalls then run as if untraced) until the programs
 * end; ``kill_all`` ends them.
 *
 * Decisions (policies and faults). For the syscalls ``select()`` names, the loop asks Python
 * before the call takes effect: a send at its entry (EV_DECIDE, with the bytes it is about to
 * send), a receive at its exit (its EV_SYSCALL carries FLAG_DECIDE, with the bytes it got).
 * That thread stays stopped until ``decide()`` says what to do (fail with an errno, skip,
 * hold for a while, rewrite or shorten the bytes, run a send again, close the fd); the loop
 * thread carries it out with ptrace (it alone may), and every other thread runs on meanwhile.
 * Nothing is selected unless Python asks: then no call waits for a decision.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/audit.h>
#include <linux/filter.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <linux/sock_diag.h>
#include <linux/unix_diag.h>
#include <linux/seccomp.h>
#include <mqueue.h>
#include <signal.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/msg.h>
#include <sys/mman.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/eventfd.h>

#if defined(__x86_64__)
#define NATIVE_ARCH AUDIT_ARCH_X86_64
#define NATIVE_NAME "x86_64"
#elif defined(__aarch64__)
#define NATIVE_ARCH AUDIT_ARCH_AARCH64
#define NATIVE_NAME "aarch64"
#else
#error "the syscall tracer knows x86_64 and aarch64"
#endif

/* ------------------------------------------------------------------ registers (decisions only) */

#if defined(__x86_64__)
#include <sys/user.h>
typedef struct user_regs_struct Regs;
#define SYSCALL_INSN 2 /* the length of `syscall` */

static int regs_get(pid_t tid, Regs *r) { return (int)ptrace(PTRACE_GETREGS, tid, 0, r); }
static int regs_put(pid_t tid, const Regs *r) { return (int)ptrace(PTRACE_SETREGS, tid, 0, r); }

static void regs_arg(Regs *r, int i, uint64_t v) {
    switch (i) {
    case 0: r->rdi = v; break;
    case 1: r->rsi = v; break;
    case 2: r->rdx = v; break;
    case 3: r->r10 = v; break;
    case 4: r->r8 = v; break;
    default: r->r9 = v; break;
    }
}

static void regs_ret(Regs *r, int64_t v) { r->rax = (uint64_t)v; }

/* the syscall the kernel runs, changed at its entry stop (-1: none) */
static int regs_put_nr(pid_t tid, Regs *r, int64_t nr) {
    r->orig_rax = (uint64_t)nr;
    return regs_put(tid, r);
}

/* at an exit stop: back to the syscall instruction, to run ``nr`` on ``fd`` next (the other
 * argument registers still hold what the call was given) */
static void regs_rewind(Regs *r, int64_t nr, int64_t fd) {
    r->rip -= SYSCALL_INSN;
    r->rax = (uint64_t)nr;
    r->rdi = (uint64_t)fd;
}

/* the argument registers a program may rely on after the call, put back from ``saved`` */
static void regs_keep_args(Regs *r, const Regs *saved) {
    r->rdi = saved->rdi;
    r->rsi = saved->rsi;
    r->rdx = saved->rdx;
    r->r10 = saved->r10;
    r->r8 = saved->r8;
    r->r9 = saved->r9;
}
#else /* aarch64 */
#include <asm/ptrace.h>
#include <elf.h>
typedef struct user_pt_regs Regs;
#define SYSCALL_INSN 4 /* the length of `svc #0` */

static int regs_get(pid_t tid, Regs *r) {
    struct iovec io = {r, sizeof *r};
    return (int)ptrace(PTRACE_GETREGSET, tid, (void *)NT_PRSTATUS, &io);
}
static int regs_put(pid_t tid, const Regs *r) {
    struct iovec io = {(void *)r, sizeof *r};
    return (int)ptrace(PTRACE_SETREGSET, tid, (void *)NT_PRSTATUS, &io);
}
static void regs_arg(Regs *r, int i, uint64_t v) { r->regs[i] = v; }
static void regs_ret(Regs *r, int64_t v) { r->regs[0] = (uint64_t)v; }
static int regs_put_nr(pid_t tid, Regs *r, int64_t nr) {
    if (regs_put(tid, r) != 0) return -1;
    int n = (int)nr;
    struct iovec io = {&n, sizeof n};
    return (int)ptrace(PTRACE_SETREGSET, tid, (void *)NT_ARM_SYSTEM_CALL, &io);
}
static void regs_rewind(Regs *r, int64_t nr, int64_t fd) {
    r->pc -= SYSCALL_INSN;
    r->regs[8] = (uint64_t)nr;
    r->regs[0] = (uint64_t)fd; /* x0 holds the return value now */
}
static void regs_keep_args(Regs *r, const Regs *saved) {
    for (int i = 1; i < 6; i++) r->regs[i] = saved->regs[i]; /* x0 is the return value */
}
#endif

/* event kinds (ipcproxy.syscall.events mirrors them) */
#define EV_SYSCALL 1
#define EV_ENTRY 2 /* a write-family call entered: its bytes may reach a reader before its exit stop */
#define EV_FORK 3
#define EV_EXEC 4 /* args[0]: the thread that called execve, args[1]: uid; addr: comm, payload: exe */
#define EV_EXIT 5

#define EV_DECIDE 6 /* a selected send at its entry: its thread waits for decide() */

#define FLAG_FAILED_READ 1 /* the payload could not be read (the tracee's memory went away) */
#define FLAG_DECIDE 2      /* an EV_SYSCALL of a selected receive: its thread waits for decide() */
#define FLAG_COPY 4        /* an EV_SYSCALL of a send run again by decide(copies=N) */

#define PUBLISH_EVERY (256u << 10) /* the loop thread hands its events over at least this often */
#define WAKE_AT (1u << 20)         /* Python is woken at once when this much waits for it */
#define PENDING_LIMIT (64u << 20)  /* beyond this the loop thread waits for Python (lossless) */
#define LINGER_NS 2000000          /* wait() lets a small batch grow this long: fewer, bigger batches */
#define MAX_CACHED_FD 65536
#define MAX_IOV 1024
#define MAX_CONTROL 4096
#define MAX_ADDR 128

/* how a syscall's arguments are read at exit */
enum shape {
    S_NONE, S_BUF, S_IOV, S_MSG, S_MMSG, S_PAIR, S_NEWFD, S_ADDR, S_PLAIN,
    /* message queues: the queue's name or its messages' priority (mq) and type (SysV) go in addr */
    S_MQOPEN, S_MQSEND, S_MQRECV, S_MSGGET, S_MSGSND, S_MSGRCV,
    /* channels whose bytes this level cannot see: the fds involved (and a shared mapping's path) */
    S_MMAP, S_MOVE
};

typedef struct {
    const char *name;
    int nr;
    enum shape shape;
    int writes; /* 1: sends bytes (an EV_ENTRY is reported) */
} Syscall;

static const Syscall SYSCALLS[] = {
    {"read", SYS_read, S_BUF, 0},
    {"write", SYS_write, S_BUF, 1},
    {"pread64", SYS_pread64, S_BUF, 0},
    {"pwrite64", SYS_pwrite64, S_BUF, 1},
    {"readv", SYS_readv, S_IOV, 0},
    {"writev", SYS_writev, S_IOV, 1},
    {"preadv", SYS_preadv, S_IOV, 0},
    {"pwritev", SYS_pwritev, S_IOV, 1},
    {"preadv2", SYS_preadv2, S_IOV, 0},
    {"pwritev2", SYS_pwritev2, S_IOV, 1},
    {"sendto", SYS_sendto, S_BUF, 1},
    {"recvfrom", SYS_recvfrom, S_BUF, 0},
    {"sendmsg", SYS_sendmsg, S_MSG, 1},
    {"recvmsg", SYS_recvmsg, S_MSG, 0},
    {"sendmmsg", SYS_sendmmsg, S_MMSG, 1},
    {"recvmmsg", SYS_recvmmsg, S_MMSG, 0},
#ifdef SYS_pipe
    {"pipe", SYS_pipe, S_PAIR, 0},
#endif
    {"pipe2", SYS_pipe2, S_PAIR, 0},
    {"socketpair", SYS_socketpair, S_PAIR, 0},
    {"socket", SYS_socket, S_NEWFD, 0},
    {"bind", SYS_bind, S_ADDR, 0},
    {"connect", SYS_connect, S_ADDR, 0},
#ifdef SYS_accept
    {"accept", SYS_accept, S_NEWFD, 0},
#endif
    {"accept4", SYS_accept4, S_NEWFD, 0},
    {"dup", SYS_dup, S_NEWFD, 0},
#ifdef SYS_dup2
    {"dup2", SYS_dup2, S_NEWFD, 0},
#endif
    {"dup3", SYS_dup3, S_NEWFD, 0},
    {"fcntl", SYS_fcntl, S_NEWFD, 0},
    {"close", SYS_close, S_PLAIN, 0},
    {"close_range", SYS_close_range, S_PLAIN, 0},
    {"execve", SYS_execve, S_PLAIN, 0},
    {"execveat", SYS_execveat, S_PLAIN, 0},
    /* POSIX message queues (addr: the name at mq_open, the priority at mq_timedreceive); mq_unlink and
     * mq_notify change no message and no attribution: not stopped at */
    {"mq_open", SYS_mq_open, S_MQOPEN, 0},
    {"mq_timedsend", SYS_mq_timedsend, S_MQSEND, 1},
    {"mq_timedreceive", SYS_mq_timedreceive, S_MQRECV, 0},
    /* SysV message queues (addr: the message's mtype) */
    {"msgget", SYS_msgget, S_MSGGET, 0},
    {"msgsnd", SYS_msgsnd, S_MSGSND, 1},
    {"msgrcv", SYS_msgrcv, S_MSGRCV, 0},
    {"msgctl", SYS_msgctl, S_PLAIN, 0},
    /* opaque channels: shared memory, io_uring, bytes moved inside the kernel */
    {"shmget", SYS_shmget, S_PLAIN, 0},
    {"shmat", SYS_shmat, S_PLAIN, 0},
    {"mmap", SYS_mmap, S_MMAP, 0}, /* only MAP_SHARED mappings stop (see install_filter) */
#ifdef SYS_io_uring_setup
    {"io_uring_setup", SYS_io_uring_setup, S_NEWFD, 0},
#endif
    {"splice", SYS_splice, S_MOVE, 1},
    {"tee", SYS_tee, S_MOVE, 1},
    {"vmsplice", SYS_vmsplice, S_MOVE, 1},
    {"sendfile", SYS_sendfile, S_MOVE, 1},
    {"copy_file_range", SYS_copy_file_range, S_MOVE, 1},
};
#define N_SYSCALLS (sizeof(SYSCALLS) / sizeof(SYSCALLS[0]))

/* Syscalls that stop only when an argument has a flag: (nr, argument index, mask). */
typedef struct {
    int nr;
    int arg;
    uint32_t mask;
} ArgFilter;

static const ArgFilter ARG_FILTERS[] = {
    {SYS_mmap, 3, MAP_SHARED}, /* a private mapping (every program loading a library) is no channel */
};
#define N_ARG_FILTERS (sizeof(ARG_FILTERS) / sizeof(ARG_FILTERS[0]))

#define MAX_NAME 256 /* a queue's name or a mapped file's path, as recorded */

/* One event as Python reads it (struct format in events.py); addr and payload follow, padded to 8. */
typedef struct {
    uint32_t size;
    uint16_t kind;
    uint16_t index; /* message index within sendmmsg/recvmmsg */
    int32_t tid;
    int32_t pid; /* thread group */
    uint64_t ts; /* CLOCK_MONOTONIC ns: at exit (or of the event) */
    uint64_t ts_entry;
    int64_t nr;
    int64_t args[6];
    int64_t ret;
    uint64_t ino[2]; /* inode of fds[0], fds[1] (0: none) */
    uint64_t dev[2];
    uint32_t mode[2];
    int32_t fds[2];
    uint64_t length; /* bytes this call (message) moved: the full length */
    uint32_t nfds;   /* file descriptors passed with SCM_RIGHTS */
    uint16_t addr_len;
    uint16_t flags;
    uint32_t payload_len;
    uint32_t pad;
    /* a socket's facts, taken while the process is stopped (once per socket, and at bind/connect/accept) */
    int32_t domain; /* 0: not described */
    int32_t socktype;
    int32_t peer_pid; /* SO_PEERCRED of a unix socket's peer */
    int32_t peer_uid;
    uint64_t peer_ino; /* a unix socket's peer (sock_diag) */
    uint16_t local_len;
    uint16_t peer_len;
    uint32_t pad2;
} Event; /* followed by addr, local address, peer address, payload */

typedef struct {
    int32_t domain, socktype, peer_pid, peer_uid;
    uint64_t peer_ino;
    uint16_t local_len, peer_len;
    unsigned char local[MAX_ADDR], peer[MAX_ADDR];
} SockFacts;

/* ------------------------------------------------------------------ tracees */

typedef struct {
    uint64_t ino, dev;
    uint32_t mode;
    uint16_t known;
    uint16_t reported; /* an event named it: Python may hold it in its fd table */
} FdFacts;

/* A thread group: its threads share one fd table, so one cache of what its fds are. */
typedef struct Proc {
    pid_t tgid;
    int threads;
    int nocache; /* it may share its fd table with another process (clone with CLONE_FILES) */
    int nfds;
    FdFacts *fds;
    struct Proc *next;
} Proc;

enum { STOP_ENTRY = 1, STOP_EXIT = 2 };
enum { RERUN_COPY = 1, RERUN_INJECT = 2 };

/* What decide() said about one stopped call (ipcproxy.syscall.intercept.SyscallAction). */
typedef struct Plan {
    int err;          /* fail with this errno */
    int skip;         /* a send: not run, reports its full length; a receive: run again (its data is lost) */
    int close;        /* shut down (socket) or close (pipe) the fd; a send fails with EPIPE, a receive reads EOF */
    int copies;       /* a send runs this many times */
    int64_t length;   /* move only this many bytes (-1: unchanged) */
    uint64_t delay_ns;
    size_t payload_len; /* bytes written over the start of the buffer */
    unsigned char payload[];
} Plan;

typedef struct Tracee {
    pid_t tid;
    pid_t tgid;
    Proc *proc;
    int in_syscall; /* between its seccomp stop and its exit stop */
    int64_t nr;
    int64_t args[6];
    uint64_t ts_entry;
    struct Tracee *next;
    /* decisions (see "decisions" below); all zero for a call nobody decides about */
    int awaiting;       /* STOP_ENTRY / STOP_EXIT: stopped until decide() */
    int decide_exit;    /* a selected receive: ask at its exit */
    int skipped;        /* the call was replaced at entry: no exit event, the return is ``forced`` */
    int rerun;          /* RERUN_COPY: a send run again; RERUN_INJECT: a call put in its place */
    int restore_args;   /* the argument registers were changed: put back at exit */
    int copies_left;
    int64_t forced;     /* the return value the program sees (skipped, injected, copied calls) */
    int64_t exit_ret;   /* a receive's own result, while it waits */
    uint64_t release;   /* held until this CLOCK_MONOTONIC ns (a delay) */
    uint64_t want_len;  /* a send's requested length */
    Regs saved;         /* registers before a change */
    struct Plan *plan;  /* the decision, until carried out */
    unsigned char *undo;      /* the program's bytes (or iovec array) to put back at exit */
    size_t undo_len;
    uint64_t undo_at;         /* where the iovec array was rewritten (0: none) */
    unsigned char *undo_iov;
    size_t undo_iov_len;
} Tracee;

static void forget_decision(Tracee *e) {
    free(e->plan);
    free(e->undo);
    free(e->undo_iov);
    e->plan = NULL;
    e->undo = e->undo_iov = NULL;
    e->undo_len = e->undo_iov_len = 0;
    e->undo_at = 0;
}

#define TABLE 4096
#define MAX_HELD 4096 /* threads held by a delay at once; beyond that a delay is not applied */
#define HELD_POLL_NS 1000000ull /* while a thread is held, stops are waited for in steps this long */

typedef struct {
    pid_t tid;
    Plan *plan;
} Decision;
#define SEEN 65536 /* socket inodes described so far (forgotten when the set fills) */

enum { CMD_DETACH = 1, CMD_DECIDE = 2, CMD_RELEASE = 4 };
enum { START_NONE, START_SPAWN, START_ATTACH };

/* The stop loop's state. Fields above ``mu`` belong to the loop thread alone; the rest is shared. */
typedef struct {
    Tracee *table[TABLE];
    size_t count;
    unsigned max_payload;
    int every_syscall; /* attached to a running process: no filter, so every syscall stops it */
    int detaching;     /* detach_all(): each tracee is let go at its next stop */
    char *buf;         /* events not handed over yet */
    size_t len, cap;
    unsigned char *scratch; /* payload staging, max_payload bytes */
    struct iovec *iov;      /* the tracee's iovecs */
    uint64_t *seen;
    size_t seen_count;
    int diag; /* NETLINK_SOCK_DIAG socket */
    unsigned char selected[N_SYSCALLS]; /* per SYSCALLS entry: 1 when Python decides about it (set before start) */
    int any_selected;
    pid_t held[MAX_HELD]; /* threads held by a delay */
    size_t nheld;
    int asked; /* a decision was asked for since the last publish() */
    /* the start request (spawn/attach), filled by the Python thread before the loop thread starts */
    int start_kind;
    char *start_path;
    char **start_argv, **start_envp;
    pid_t start_pid;

    pthread_mutex_t mu;
    pthread_cond_t cond;   /* start result; room again after backpressure */
    Proc *procs[TABLE];    /* written by the loop thread under mu (kill_all reads it) */
    char *out;             /* events handed over, waiting for wait() */
    size_t out_len, out_cap;
    char *spare;           /* a taken buffer, reused */
    size_t spare_cap;
    uint64_t out_since;    /* when ``out`` last became non-empty */
    int nomem;             /* an event could not be kept: wait() raises MemoryError */
    int py_waiting;        /* wait() sleeps on efd */
    int efd;               /* eventfd: the loop thread wakes wait() */
    int start_state;       /* 0: starting, 1: started, -1: failed (start_errno, start_file) */
    int start_errno;
    char start_file[64];
    int finished;          /* the loop thread is done: no tracee left */
    int orphaned;          /* the Python object is gone: events are discarded */
    int refs;              /* the Python object and the loop thread */
    pid_t loop_tid;
    Decision *dq; /* decide()'s answers, for the loop thread to carry out */
    size_t dq_len, dq_cap;
    int urgent;   /* ``out`` holds a question: wait() returns it at once */
    atomic_int commands;
    atomic_int record;
    atomic_int main_status; /* -1 until the main child ends */
    atomic_int tracees;
    pid_t main_pid;
} Tracer;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static const Syscall *lookup_syscall(int64_t nr) {
    for (size_t i = 0; i < N_SYSCALLS; i++)
        if (SYSCALLS[i].nr == nr) return &SYSCALLS[i];
    return NULL;
}

static pid_t read_tgid(pid_t tid) {
    char path[64], line[256];
    snprintf(path, sizeof path, "/proc/%d/status", tid);
    FILE *f = fopen(path, "re");
    pid_t tgid = tid;
    if (!f) return tid;
    while (fgets(line, sizeof line, f))
        if (strncmp(line, "Tgid:", 5) == 0) {
            tgid = (pid_t)atoi(line + 5);
            break;
        }
    fclose(f);
    return tgid;
}

static Tracee *find(Tracer *t, pid_t tid) {
    for (Tracee *e = t->table[(unsigned)tid % TABLE]; e; e = e->next)
        if (e->tid == tid) return e;
    return NULL;
}

static Proc *proc_of(Tracer *t, pid_t tgid) {
    for (Proc *p = t->procs[(unsigned)tgid % TABLE]; p; p = p->next)
        if (p->tgid == tgid) return p;
    Proc *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->tgid = tgid;
    pthread_mutex_lock(&t->mu);
    p->next = t->procs[(unsigned)tgid % TABLE];
    t->procs[(unsigned)tgid % TABLE] = p;
    pthread_mutex_unlock(&t->mu);
    return p;
}

static void proc_release(Tracer *t, Proc *proc) {
    if (!proc || --proc->threads > 0) return;
    pthread_mutex_lock(&t->mu);
    for (Proc **p = &t->procs[(unsigned)proc->tgid % TABLE]; *p; p = &(*p)->next)
        if (*p == proc) {
            *p = proc->next;
            break;
        }
    pthread_mutex_unlock(&t->mu);
    free(proc->fds);
    free(proc);
}

static Tracee *add(Tracer *t, pid_t tid) {
    Tracee *e = calloc(1, sizeof *e);
    if (!e) return NULL;
    e->tid = tid;
    e->tgid = read_tgid(tid);
    e->proc = proc_of(t, e->tgid);
    if (!e->proc) {
        free(e);
        return NULL;
    }
    e->proc->threads++;
    e->next = t->table[(unsigned)tid % TABLE];
    t->table[(unsigned)tid % TABLE] = e;
    t->count++;
    atomic_store(&t->tracees, (int)t->count);
    return e;
}

static void drop(Tracer *t, pid_t tid) {
    Tracee **p = &t->table[(unsigned)tid % TABLE];
    for (; *p; p = &(*p)->next)
        if ((*p)->tid == tid) {
            Tracee *e = *p;
            *p = e->next;
            proc_release(t, e->proc);
            forget_decision(e);
            free(e);
            t->count--;
            atomic_store(&t->tracees, (int)t->count);
            return;
        }
}

/* ------------------------------------------------------------------ what an fd is */

/* inode, device and mode of a process's fd: from the cache, else from /proc (then cached). 0: not open.
 * ``report``: the caller puts it in an event. */
static int fd_lookup(Tracee *e, int fd, uint64_t *ino, uint64_t *dev, uint32_t *mode, int report) {
    Proc *p = e->proc;
    if (fd < 0) return 0;
    if (p && fd < p->nfds && p->fds[fd].known) {
        p->fds[fd].reported |= (uint16_t)report;
        *ino = p->fds[fd].ino;
        *dev = p->fds[fd].dev;
        *mode = p->fds[fd].mode;
        return 1;
    }
    char path[64];
    struct stat st;
    snprintf(path, sizeof path, "/proc/%d/fd/%d", e->tid, fd);
    if (stat(path, &st) != 0) return 0;
    *ino = st.st_ino;
    *dev = st.st_dev;
    *mode = st.st_mode;
    if (p && !p->nocache && fd < MAX_CACHED_FD) {
        if (fd >= p->nfds) {
            int n = p->nfds ? p->nfds : 64;
            while (n <= fd) n *= 2;
            FdFacts *grown = realloc(p->fds, (size_t)n * sizeof *grown);
            if (!grown) return 1;
            memset(grown + p->nfds, 0, (size_t)(n - p->nfds) * sizeof *grown);
            p->fds = grown;
            p->nfds = n;
        }
        p->fds[fd] = (FdFacts){st.st_ino, st.st_dev, st.st_mode, 1, (uint16_t)report};
    }
    return 1;
}

static int fd_facts(Tracee *e, int fd, uint64_t *ino, uint64_t *dev, uint32_t *mode) {
    return fd_lookup(e, fd, ino, dev, mode, 1);
}

static void fd_forget(Proc *p, int64_t fd) {
    if (p && fd >= 0 && fd < p->nfds) p->fds[fd].known = 0;
}

static void fd_forget_range(Proc *p, uint64_t first, uint64_t last) {
    if (!p) return;
    for (uint64_t fd = first; fd <= last && fd < (uint64_t)p->nfds; fd++) p->fds[fd].known = 0;
}

static int is_channel(uint32_t mode) { return S_ISFIFO(mode) || S_ISSOCK(mode); }

/* ------------------------------------------------------------------ the batch */

static Event *reserve(Tracer *t, size_t tail) {
    size_t size = (sizeof(Event) + tail + 7) & ~(size_t)7;
    if (t->len + size > t->cap) {
        size_t cap = t->cap ? t->cap : 1u << 16;
        while (cap < t->len + size) cap *= 2;
        char *grown = realloc(t->buf, cap);
        if (!grown) return NULL;
        t->buf = grown;
        t->cap = cap;
    }
    Event *ev = (Event *)(t->buf + t->len);
    memset(ev, 0, size);
    ev->size = (uint32_t)size;
    t->len += size;
    return ev;
}

static Event *simple_event(Tracer *t, int kind, Tracee *e, pid_t tid) {
    Event *ev = reserve(t, 0);
    if (!ev) return NULL;
    ev->kind = (uint16_t)kind;
    ev->tid = tid;
    ev->pid = e ? e->tgid : tid;
    ev->ts = now_ns();
    ev->fds[0] = ev->fds[1] = -1;
    return ev;
}

static int seen_add(Tracer *t, uint64_t ino) {
    /* 1 when ino was already there */
    if (t->seen_count > SEEN * 3 / 4) {
        memset(t->seen, 0, SEEN * sizeof *t->seen);
        t->seen_count = 0;
    }
    size_t i = (size_t)(ino * 0x9E3779B97F4A7C15ull >> 48) % SEEN;
    while (t->seen[i]) {
        if (t->seen[i] == ino) return 1;
        i = (i + 1) % SEEN;
    }
    t->seen[i] = ino;
    t->seen_count++;
    return 0;
}

/* A unix socket's peer inode, from the kernel (one exact sock_diag request). */
static uint64_t unix_peer(Tracer *t, uint64_t ino) {
    struct {
        struct nlmsghdr nlh;
        struct unix_diag_req req;
    } msg = {0};
    msg.nlh.nlmsg_len = sizeof msg;
    msg.nlh.nlmsg_type = SOCK_DIAG_BY_FAMILY;
    msg.nlh.nlmsg_flags = NLM_F_REQUEST;
    msg.req.sdiag_family = AF_UNIX;
    msg.req.udiag_states = ~0u;
    msg.req.udiag_ino = (uint32_t)ino;
    msg.req.udiag_show = UDIAG_SHOW_PEER;
    msg.req.udiag_cookie[0] = msg.req.udiag_cookie[1] = ~0u;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    if (t->diag < 0 || sendto(t->diag, &msg, sizeof msg, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) return 0;
    char buf[1024];
    ssize_t got = recv(t->diag, buf, sizeof buf, 0);
    if (got < (ssize_t)(NLMSG_HDRLEN + sizeof(struct unix_diag_msg))) return 0;
    struct nlmsghdr *h = (struct nlmsghdr *)buf;
    if (h->nlmsg_type != SOCK_DIAG_BY_FAMILY || h->nlmsg_len > (size_t)got) return 0;
    struct unix_diag_msg *m = NLMSG_DATA(h);
    int left = (int)h->nlmsg_len - (int)NLMSG_LENGTH(sizeof *m);
    for (struct rtattr *a = (struct rtattr *)(m + 1); RTA_OK(a, left); a = RTA_NEXT(a, left))
        if (a->rta_type == UNIX_DIAG_PEER && RTA_PAYLOAD(a) >= sizeof(uint32_t)) return *(uint32_t *)RTA_DATA(a);
    return 0;
}

/* What a tracee's socket is: a copy of its fd (pidfd_getfd) is asked and closed before the tracee runs on. */
static int describe_socket(Tracer *t, pid_t tgid, int fd, uint64_t ino, SockFacts *f) {
    memset(f, 0, sizeof *f);
    int pidfd = (int)syscall(SYS_pidfd_open, tgid, 0);
    if (pidfd < 0) return 0;
    int mine = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    close(pidfd);
    if (mine < 0) return 0;
    socklen_t len = sizeof f->domain;
    getsockopt(mine, SOL_SOCKET, SO_DOMAIN, &f->domain, &len);
    len = sizeof f->socktype;
    getsockopt(mine, SOL_SOCKET, SO_TYPE, &f->socktype, &len);
    len = MAX_ADDR;
    if (getsockname(mine, (struct sockaddr *)f->local, &len) == 0) f->local_len = (uint16_t)(len < MAX_ADDR ? len : MAX_ADDR);
    len = MAX_ADDR;
    if (getpeername(mine, (struct sockaddr *)f->peer, &len) == 0) f->peer_len = (uint16_t)(len < MAX_ADDR ? len : MAX_ADDR);
    f->peer_pid = f->peer_uid = -1;
    if (f->domain == AF_UNIX) {
        struct ucred cred;
        len = sizeof cred;
        if (getsockopt(mine, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 && cred.pid > 0) {
            f->peer_pid = cred.pid;
            f->peer_uid = (int32_t)cred.uid;
        }
        f->peer_ino = unix_peer(t, ino);
    }
    close(mine);
    seen_add(t, ino);
    return 1;
}

static size_t sock_tail(const SockFacts *f) { return f ? (size_t)f->local_len + f->peer_len : 0; }

/* Copies the socket facts into ev; their addresses go at ``tail``. */
static void put_sock(Event *ev, const SockFacts *f, unsigned char *tail) {
    if (!f || !f->domain) return;
    ev->domain = f->domain;
    ev->socktype = f->socktype;
    ev->peer_pid = f->peer_pid;
    ev->peer_uid = f->peer_uid;
    ev->peer_ino = f->peer_ino;
    ev->local_len = f->local_len;
    ev->peer_len = f->peer_len;
    memcpy(tail, f->local, f->local_len);
    memcpy(tail + f->local_len, f->peer, f->peer_len);
}

static ssize_t peek(pid_t tid, void *local, uint64_t remote, size_t n) {
    if (!remote || !n) return 0;
    struct iovec l = {local, n}, r = {(void *)(uintptr_t)remote, n};
    return process_vm_readv(tid, &l, 1, &r, 1, 0);
}

/* Copies up to max_payload of the first ``length`` bytes described by the tracee's iovecs. */
static size_t gather(Tracer *t, pid_t tid, const struct iovec *remote, size_t count, uint64_t length, int *failed) {
    size_t want = length < t->max_payload ? (size_t)length : t->max_payload;
    if (!want) return 0;
    struct iovec r[MAX_IOV];
    size_t n = 0, left = want;
    for (size_t i = 0; i < count && left && n < MAX_IOV; i++) {
        size_t take = remote[i].iov_len < left ? remote[i].iov_len : left;
        if (!take) continue;
        r[n].iov_base = remote[i].iov_base;
        r[n].iov_len = take;
        left -= take;
        n++;
    }
    struct iovec l = {t->scratch, want - left};
    ssize_t got = process_vm_readv(tid, &l, 1, r, n, 0);
    if (got < 0) {
        *failed = 1;
        return 0;
    }
    return (size_t)got;
}

/* File descriptors passed with SCM_RIGHTS; received ones (``proc``) are new fds of that process. */
static int count_rights(pid_t tid, uint64_t control, size_t controllen, Proc *proc) {
    unsigned char cbuf[MAX_CONTROL];
    if (!control || !controllen) return 0;
    if (controllen > MAX_CONTROL) controllen = MAX_CONTROL;
    ssize_t got = peek(tid, cbuf, control, controllen);
    if (got <= 0) return 0;
    struct msghdr m = {0};
    m.msg_control = cbuf;
    m.msg_controllen = (size_t)got;
    int fds = 0;
    for (struct cmsghdr *c = CMSG_FIRSTHDR(&m); c; c = CMSG_NXTHDR(&m, c))
        if (c->cmsg_level == SOL_SOCKET && c->cmsg_type == SCM_RIGHTS && c->cmsg_len >= CMSG_LEN(0)) {
            int n = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
            for (int i = 0; proc && i < n && (unsigned char *)CMSG_DATA(c) + (i + 1) * sizeof(int) <= cbuf + got; i++) {
                int fd;
                memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof fd);
                fd_forget(proc, fd);
            }
            fds += n;
        }
    return fds;
}

/* One data event: header, address, payload. */
/* A syscall's event at its exit, with what every such event says; ``tail`` bytes follow it. */
static Event *syscall_event(Tracer *t, const Tracee *e, int64_t ret, size_t tail) {
    Event *ev = reserve(t, tail);
    if (!ev) return NULL;
    ev->kind = EV_SYSCALL;
    ev->tid = e->tid;
    ev->pid = e->tgid;
    ev->ts = now_ns();
    ev->ts_entry = e->ts_entry;
    ev->nr = e->nr;
    memcpy(ev->args, e->args, sizeof ev->args);
    ev->ret = ret;
    return ev;
}

static int emit_data(Tracer *t, Tracee *e, int64_t ret, unsigned index, const struct iovec *iov, size_t iovcnt,
                     uint64_t length, const unsigned char *addr, size_t addr_len, int nfds) {
    int failed = 0;
    uint64_t ino = 0, dev = 0;
    uint32_t mode = 0;
    fd_facts(e, (int)e->args[0], &ino, &dev, &mode);
    SockFacts facts, *sock = NULL;
    if (ret >= 0 && S_ISSOCK(mode) && !seen_add(t, ino) && describe_socket(t, e->tgid, (int)e->args[0], ino, &facts))
        sock = &facts;
    size_t got = gather(t, e->tid, iov, iovcnt, length, &failed);
    if (addr_len > MAX_ADDR) addr_len = MAX_ADDR;
    Event *ev = syscall_event(t, e, ret, addr_len + sock_tail(sock) + got);
    if (!ev) return -1;
    ev->index = (uint16_t)index;
    ev->fds[0] = (int32_t)e->args[0];
    ev->fds[1] = -1;
    ev->ino[0] = ino;
    ev->dev[0] = dev;
    ev->mode[0] = mode;
    ev->length = length;
    ev->nfds = (uint32_t)nfds;
    ev->addr_len = (uint16_t)addr_len;
    ev->flags = failed ? FLAG_FAILED_READ : 0;
    ev->payload_len = (uint32_t)got;
    unsigned char *tail = (unsigned char *)(ev + 1);
    if (addr_len) memcpy(tail, addr, addr_len);
    put_sock(ev, sock, tail + addr_len);
    if (got) memcpy(tail + addr_len + sock_tail(sock), t->scratch, got);
    return 0;
}

static size_t read_iovecs(Tracer *t, pid_t tid, uint64_t remote, uint64_t count) {
    if (count > MAX_IOV) count = MAX_IOV;
    ssize_t got = peek(tid, t->iov, remote, count * sizeof(struct iovec));
    return got < 0 ? 0 : (size_t)got / sizeof(struct iovec);
}

/* A message header (sendmsg/recvmsg, one of sendmmsg/recvmmsg) moved ``length`` bytes. */
static int emit_msghdr(Tracer *t, Tracee *e, int64_t ret, unsigned index, uint64_t hdr_at, uint64_t length) {
    struct msghdr m;
    unsigned char addr[MAX_ADDR];
    size_t addr_len = 0;
    if (peek(e->tid, &m, hdr_at, sizeof m) != (ssize_t)sizeof m) return emit_data(t, e, ret, index, NULL, 0, length, NULL, 0, 0);
    size_t n = read_iovecs(t, e->tid, (uint64_t)(uintptr_t)m.msg_iov, m.msg_iovlen);
    if (m.msg_name && m.msg_namelen) {
        size_t want = m.msg_namelen < MAX_ADDR ? m.msg_namelen : MAX_ADDR;
        ssize_t got = peek(e->tid, addr, (uint64_t)(uintptr_t)m.msg_name, want);
        addr_len = got > 0 ? (size_t)got : 0;
    }
    const Syscall *sc = lookup_syscall(e->nr);
    int nfds = count_rights(e->tid, (uint64_t)(uintptr_t)m.msg_control, m.msg_controllen,
                            sc && !sc->writes && ret >= 0 ? e->proc : NULL);
    return emit_data(t, e, ret, index, t->iov, n, length, addr, addr_len, nfds);
}

/* ------------------------------------------------------------------ message queues and opaque channels */

/* A string of the tracee's (a queue's name), up to MAX_NAME bytes, read page by page; its length. */
static size_t peek_string(pid_t tid, uint64_t at, char *out) {
    size_t len = 0;
    while (at && len < MAX_NAME) {
        size_t room = 4096 - (size_t)((at + len) & 4095);
        if (room > MAX_NAME - len) room = MAX_NAME - len;
        ssize_t got = peek(tid, out + len, at + len, room);
        if (got <= 0) break;
        char *nul = memchr(out + len, 0, (size_t)got);
        if (nul) return (size_t)(nul - out);
        len += (size_t)got;
    }
    return len;
}

/* Messages a queue holds now, asked while the tracee that opened it is stopped (0: not known). */
static uint64_t mq_held(pid_t tgid, int fd) {
    struct mq_attr attr;
    int pidfd = (int)syscall(SYS_pidfd_open, tgid, 0);
    if (pidfd < 0) return 0;
    int mine = (int)syscall(SYS_pidfd_getfd, pidfd, fd, 0);
    close(pidfd);
    if (mine < 0) return 0;
    long ok = syscall(SYS_mq_getsetattr, mine, NULL, &attr);
    close(mine);
    return ok == 0 && attr.mq_curmsgs > 0 ? (uint64_t)attr.mq_curmsgs : 0;
}

/* A call without payload: fds[0] and fds[1] (-1: none) described, ``length`` and ``tail`` (addr) as given. */
static int emit_facts(Tracer *t, Tracee *e, int64_t ret, int fd0, int fd1, uint64_t length, const void *tail,
                      size_t tail_len) {
    Event *ev = syscall_event(t, e, ret, tail_len);
    if (!ev) return -1;
    ev->fds[0] = fd0;
    ev->fds[1] = fd1;
    if (e->nr == SYS_mq_open) fd_forget(e->proc, fd0); /* a new fd */
    for (int i = 0; i < 2; i++)
        if (ev->fds[i] >= 0) fd_facts(e, ev->fds[i], &ev->ino[i], &ev->dev[i], &ev->mode[i]);
    ev->length = length;
    ev->addr_len = (uint16_t)tail_len;
    if (tail_len) memcpy(ev + 1, tail, tail_len);
    return 0;
}

/* msgsnd/msgrcv: the message's mtype (addr) and its text (payload); a SysV queue has no fd. */
static int emit_sysv(Tracer *t, Tracee *e, int64_t ret, uint64_t length) {
    int64_t *a = e->args;
    long mtype = 0;
    int failed = 0;
    size_t addr_len = ret >= 0 && peek(e->tid, &mtype, (uint64_t)a[1], sizeof mtype) == (ssize_t)sizeof mtype
                          ? sizeof mtype : 0;
    struct iovec one = {(void *)(uintptr_t)((uint64_t)a[1] + sizeof(long)), (size_t)length};
    size_t got = ret >= 0 ? gather(t, e->tid, &one, 1, length, &failed) : 0;
    Event *ev = syscall_event(t, e, ret, addr_len + got);
    if (!ev) return -1;
    ev->fds[0] = ev->fds[1] = -1;
    ev->length = length;
    ev->addr_len = (uint16_t)addr_len;
    ev->flags = failed ? FLAG_FAILED_READ : 0;
    ev->payload_len = (uint32_t)got;
    unsigned char *tail = (unsigned char *)(ev + 1);
    memcpy(tail, &mtype, addr_len);
    if (got) memcpy(tail + addr_len, t->scratch, got);
    return 0;
}

/* The queue and opaque-channel shapes; 1 when ``sc`` is not one of them. */
static int emit_queue_exit(Tracer *t, Tracee *e, const Syscall *sc, int64_t ret) {
    int64_t *a = e->args;
    char name[MAX_NAME];
    switch (sc->shape) {
    case S_MQOPEN: {
        size_t len = peek_string(e->tid, (uint64_t)a[0], name);
        return emit_facts(t, e, ret, ret >= 0 ? (int)ret : -1, -1, ret >= 0 ? mq_held(e->tgid, (int)ret) : 0, name,
                          len);
    }
    case S_MQSEND: {
        struct iovec one = {(void *)(uintptr_t)a[1], (size_t)a[2]};
        return emit_data(t, e, ret, 0, &one, 1, ret == 0 ? (uint64_t)a[2] : 0, NULL, 0, 0);
    }
    case S_MQRECV: {
        uint32_t prio = 0;
        size_t prio_len = ret >= 0 && a[3] && peek(e->tid, &prio, (uint64_t)a[3], sizeof prio) == (ssize_t)sizeof prio
                              ? sizeof prio : 0;
        struct iovec one = {(void *)(uintptr_t)a[1], ret > 0 ? (size_t)ret : 0};
        return emit_data(t, e, ret, 0, &one, 1, ret > 0 ? (uint64_t)ret : 0, (unsigned char *)&prio, prio_len, 0);
    }
    case S_MSGGET: {
        struct msqid_ds ds;
        uint64_t held = ret >= 0 && msgctl((int)ret, IPC_STAT, &ds) == 0 ? (uint64_t)ds.msg_qnum : 0;
        return emit_facts(t, e, ret, -1, -1, held, NULL, 0);
    }
    case S_MSGSND:
        return emit_sysv(t, e, ret, ret == 0 ? (uint64_t)a[2] : 0);
    case S_MSGRCV:
        return emit_sysv(t, e, ret, ret > 0 ? (uint64_t)ret : 0);
    case S_MMAP: {
        /* a shared mapping of a file (its path: /dev/shm, memfd:...) is a channel; an anonymous one is not */
        if (ret < 0 || !(a[3] & MAP_SHARED) || (a[3] & MAP_ANONYMOUS) || (int)a[4] < 0) return 0;
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/fd/%d", e->tid, (int)a[4]);
        ssize_t len = readlink(path, name, sizeof name);
        return emit_facts(t, e, ret, (int)a[4], -1, (uint64_t)a[1], name, len > 0 ? (size_t)len : 0);
    }
    case S_MOVE: {
        /* fds[0]: where the bytes came from, fds[1]: where they went (vmsplice: its one pipe) */
        int from = (int)a[0], to = -1;
        if (e->nr == SYS_splice || e->nr == SYS_copy_file_range)
            to = (int)a[2];
        else if (e->nr == SYS_tee)
            to = (int)a[1];
        else if (e->nr == SYS_sendfile) {
            from = (int)a[1];
            to = (int)a[0];
        }
        return emit_facts(t, e, ret, from, to, ret > 0 ? (uint64_t)ret : 0, NULL, 0);
    }
    default:
        return 1;
    }
}

static int emit_exit(Tracer *t, Tracee *e, int64_t ret) {
    const Syscall *sc = lookup_syscall(e->nr);
    int64_t *a = e->args;
    uint64_t moved = ret > 0 ? (uint64_t)ret : 0;
    if (!sc) return 0;
    int queue = emit_queue_exit(t, e, sc, ret);
    if (queue <= 0) return queue;
    switch (sc->shape) {
    case S_BUF: {
        struct iovec one = {(void *)(uintptr_t)a[1], (size_t)moved};
        unsigned char addr[MAX_ADDR];
        size_t addr_len = 0;
        if (ret >= 0 && e->nr == SYS_sendto && a[4] && a[5] > 0) {
            ssize_t got = peek(e->tid, addr, (uint64_t)a[4], a[5] < MAX_ADDR ? (size_t)a[5] : MAX_ADDR);
            addr_len = got > 0 ? (size_t)got : 0;
        } else if (ret >= 0 && e->nr == SYS_recvfrom && a[4] && a[5]) {
            socklen_t alen = 0;
            if (peek(e->tid, &alen, (uint64_t)a[5], sizeof alen) == (ssize_t)sizeof alen && alen) {
                ssize_t got = peek(e->tid, addr, (uint64_t)a[4], alen < MAX_ADDR ? alen : MAX_ADDR);
                addr_len = got > 0 ? (size_t)got : 0;
            }
        }
        return emit_data(t, e, ret, 0, &one, 1, moved, addr, addr_len, 0);
    }
    case S_IOV: {
        size_t n = ret > 0 ? read_iovecs(t, e->tid, (uint64_t)a[1], (uint64_t)a[2]) : 0;
        return emit_data(t, e, ret, 0, t->iov, n, moved, NULL, 0, 0);
    }
    case S_MSG:
        if (ret < 0) return emit_data(t, e, ret, 0, NULL, 0, 0, NULL, 0, 0);
        return emit_msghdr(t, e, ret, 0, (uint64_t)a[1], moved);
    case S_MMSG:
        if (ret <= 0) return emit_data(t, e, ret, 0, NULL, 0, 0, NULL, 0, 0);
        for (int64_t i = 0; i < ret && i < 1024; i++) {
            struct mmsghdr mm;
            uint64_t at = (uint64_t)a[1] + (uint64_t)i * sizeof mm;
            if (peek(e->tid, &mm, at, sizeof mm) != (ssize_t)sizeof mm) break;
            if (emit_msghdr(t, e, ret, (unsigned)i, at, mm.msg_len) < 0) return -1;
        }
        return 0;
    default:
        break;
    }
    unsigned char addr[MAX_ADDR];
    size_t addr_len = 0;
    if (ret >= 0 && sc->shape == S_ADDR && a[2] > 0) {
        ssize_t got = peek(e->tid, addr, (uint64_t)a[1], a[2] < MAX_ADDR ? (size_t)a[2] : MAX_ADDR);
        addr_len = got > 0 ? (size_t)got : 0;
    }
    int fds[2] = {-1, -1};
    uint64_t ino[2] = {0, 0}, dev[2] = {0, 0};
    uint32_t mode[2] = {0, 0};
    SockFacts facts, *sock = NULL;
    if (ret >= 0 && sc->shape == S_PAIR) {
        int pair[2];
        uint64_t at = (uint64_t)(e->nr == SYS_socketpair ? a[3] : a[0]);
        if (peek(e->tid, pair, at, sizeof pair) == (ssize_t)sizeof pair)
            for (int i = 0; i < 2; i++) {
                fds[i] = pair[i];
                fd_forget(e->proc, pair[i]);
                fd_facts(e, pair[i], &ino[i], &dev[i], &mode[i]);
            }
    } else if (ret >= 0 && sc->shape == S_NEWFD) {
        if (e->nr != SYS_fcntl || a[1] == F_DUPFD || a[1] == F_DUPFD_CLOEXEC) {
            fds[0] = (int)ret;
            fd_forget(e->proc, ret); /* a new fd, or dup2/dup3's target: what it was is gone */
            fd_facts(e, (int)ret, &ino[0], &dev[0], &mode[0]);
        }
    } else if (ret >= 0 && sc->shape == S_ADDR) {
        fds[0] = (int)a[0];
        fd_facts(e, (int)a[0], &ino[0], &dev[0], &mode[0]);
    }
    if (e->nr == SYS_close_range && ret >= 0) fd_forget_range(e->proc, (uint64_t)a[0], (uint64_t)(uint32_t)a[1]);
    int fresh = e->nr == SYS_bind || e->nr == SYS_connect || e->nr == SYS_accept4
#ifdef SYS_accept
                || e->nr == SYS_accept
#endif
        ; /* the socket's addresses are new: describe it again */
    /* a new socket has nothing to describe yet: not marked seen, so that its first data call describes it */
    if (fds[0] >= 0 && S_ISSOCK(mode[0]) && e->nr != SYS_socket && (fresh ? 1 : !seen_add(t, ino[0])) &&
        describe_socket(t, e->tgid, fds[0], ino[0], &facts))
        sock = &facts;
    Event *ev = syscall_event(t, e, ret, addr_len + sock_tail(sock));
    if (!ev) return -1;
    for (int i = 0; i < 2; i++) {
        ev->fds[i] = fds[i];
        ev->ino[i] = ino[i];
        ev->dev[i] = dev[i];
        ev->mode[i] = mode[i];
    }
    ev->addr_len = (uint16_t)addr_len;
    unsigned char *tail = (unsigned char *)(ev + 1);
    if (addr_len) memcpy(tail, addr, addr_len);
    put_sock(ev, sock, tail + addr_len);
    return 0;
}

/* ------------------------------------------------------------------ strings */

static void free_strings(char **v) {
    if (!v) return;
    for (char **p = v; *p; p++) free(*p);
    free(v);
}

static char **strings(PyObject *seq, const char *what) {
    PyObject *fast = PySequence_Fast(seq, what);
    if (!fast) return NULL;
    Py_ssize_t n = PySequence_Fast_GET_SIZE(fast);
    char **v = calloc((size_t)n + 1, sizeof *v);
    if (!v) {
        Py_DECREF(fast);
        PyErr_NoMemory();
        return NULL;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *item = PySequence_Fast_GET_ITEM(fast, i);
        char *data;
        Py_ssize_t len;
        if (PyBytes_AsStringAndSize(item, &data, &len) < 0 || !(v[i] = strdup(data))) {
            if (!PyErr_Occurred()) PyErr_NoMemory();
            free_strings(v);
            Py_DECREF(fast);
            return NULL;
        }
    }
    Py_DECREF(fast);
    return v;
}

/* ------------------------------------------------------------------ decisions */

static int selected(Tracer *t, const Syscall *sc) { return sc && t->any_selected && t->selected[sc - SYSCALLS]; }

/* The iovecs of the stopped call's buffer, into t->iov; *array_at: where the tracee keeps them (0: a plain buffer). */
static size_t call_iovecs(Tracer *t, Tracee *e, uint64_t *array_at) {
    const Syscall *sc = lookup_syscall(e->nr);
    int64_t *a = e->args;
    *array_at = 0;
    if (!sc) return 0;
    if (sc->shape == S_BUF) {
        t->iov[0].iov_base = (void *)(uintptr_t)a[1];
        t->iov[0].iov_len = (size_t)a[2];
        return 1;
    }
    if (sc->shape == S_IOV) {
        *array_at = (uint64_t)a[1];
        return read_iovecs(t, e->tid, (uint64_t)a[1], (uint64_t)a[2]);
    }
    if (sc->shape == S_MSG) {
        struct msghdr m;
        if (peek(e->tid, &m, (uint64_t)a[1], sizeof m) != (ssize_t)sizeof m) return 0;
        *array_at = (uint64_t)(uintptr_t)m.msg_iov;
        return read_iovecs(t, e->tid, (uint64_t)(uintptr_t)m.msg_iov, m.msg_iovlen);
    }
    return 0;
}

/* The first ``len`` bytes the iovecs describe, as remote iovecs in ``r`` (returns how many). */
static size_t span(const struct iovec *remote, size_t count, size_t len, struct iovec *r) {
    size_t n = 0;
    for (size_t i = 0; i < count && len && n < MAX_IOV; i++) {
        size_t take = remote[i].iov_len < len ? remote[i].iov_len : len;
        if (!take) continue;
        r[n].iov_base = remote[i].iov_base;
        r[n].iov_len = take;
        len -= take;
        n++;
    }
    return n;
}

static ssize_t move_span(pid_t tid, const struct iovec *remote, size_t count, unsigned char *data, size_t len, int write) {
    struct iovec r[MAX_IOV];
    size_t n = span(remote, count, len, r);
    size_t total = 0;
    for (size_t i = 0; i < n; i++) total += r[i].iov_len;
    struct iovec l = {data, total};
    return write ? process_vm_writev(tid, &l, 1, r, n, 0) : process_vm_readv(tid, &l, 1, r, n, 0);
}

/* A selected send at its entry: the facts Python needs, its bytes included (an EV_DECIDE). */
static int emit_decide(Tracer *t, Tracee *e) {
    int64_t *a = e->args;
    uint64_t array_at;
    size_t n = call_iovecs(t, e, &array_at);
    uint64_t want = 0;
    for (size_t i = 0; i < n; i++) want += t->iov[i].iov_len;
    unsigned char addr[MAX_ADDR];
    size_t addr_len = 0;
    int nfds = 0;
    if (e->nr == SYS_sendto && a[4] && a[5] > 0) {
        ssize_t got = peek(e->tid, addr, (uint64_t)a[4], a[5] < MAX_ADDR ? (size_t)a[5] : MAX_ADDR);
        addr_len = got > 0 ? (size_t)got : 0;
    } else if (e->nr == SYS_sendmsg) {
        struct msghdr m;
        if (peek(e->tid, &m, (uint64_t)a[1], sizeof m) == (ssize_t)sizeof m) {
            if (m.msg_name && m.msg_namelen) {
                ssize_t got = peek(e->tid, addr, (uint64_t)(uintptr_t)m.msg_name, m.msg_namelen < MAX_ADDR ? m.msg_namelen : MAX_ADDR);
                addr_len = got > 0 ? (size_t)got : 0;
            }
            nfds = count_rights(e->tid, (uint64_t)(uintptr_t)m.msg_control, m.msg_controllen, e->proc);
        }
    }
    size_t at = t->len;
    if (emit_data(t, e, 0, 0, t->iov, n, want, addr, addr_len, nfds) < 0) return -1;
    Event *ev = (Event *)(t->buf + at);
    ev->kind = EV_DECIDE;
    ev->ts = e->ts_entry;
    e->want_len = want;
    return 0;
}

/* At the entry stop: a selected call waits for a decision (1), or runs on (0). */
static int ask_at_entry(Tracer *t, Tracee *e, const Syscall *sc) {
    if (!selected(t, sc) || e->rerun) return 0;
    if (!sc->writes) {
        e->decide_exit = 1; /* a receive: judged by what it got */
        return 0;
    }
    uint64_t ino = 0, dev = 0;
    uint32_t mode = 0;
    if (!fd_lookup(e, (int)e->args[0], &ino, &dev, &mode, 0) || !is_channel(mode))
        return 0; /* a file, a terminal: no channel to judge */
    if (emit_decide(t, e) < 0) return -1;
    e->awaiting = STOP_ENTRY;
    t->asked = 1;
    return 1;
}

/* What closes the channel for the process: shutdown of a socket, close of anything else (then forgotten). */
static int64_t close_call(Tracee *e, int fd) {
    uint64_t ino = 0, dev = 0;
    uint32_t mode = 0;
    fd_lookup(e, fd, &ino, &dev, &mode, 0);
    if (S_ISSOCK(mode)) return SYS_shutdown;
    fd_forget(e->proc, fd);
    return SYS_close;
}

static void resume(Tracer *t, Tracee *e, int sig);

/* A send's decision, at its entry. */
static void enter_planned(Tracer *t, Tracee *e, const Plan *p) {
    Regs r;
    if (!p || regs_get(e->tid, &r) != 0) return;
    e->saved = r;
    int fd = (int)e->args[0];
    if (p->err || p->skip || p->close) { /* the call does not run (or a shutdown/close runs instead) */
        int64_t nr = -1;
        if (p->close) {
            nr = close_call(e, fd);
            regs_arg(&r, 1, SHUT_RDWR);
        }
        e->skipped = 1;
        e->forced = p->err ? -(int64_t)p->err : p->skip ? (int64_t)e->want_len : -EPIPE;
        regs_put_nr(e->tid, &r, nr);
        return;
    }
    uint64_t array_at = 0;
    size_t n = call_iovecs(t, e, &array_at);
    if (p->payload_len && n) { /* rewrite the program's bytes; put back at exit */
        size_t len = p->payload_len < e->want_len ? p->payload_len : (size_t)e->want_len;
        unsigned char *old = malloc(len ? len : 1);
        if (old && move_span(e->tid, t->iov, n, old, len, 0) == (ssize_t)len &&
            move_span(e->tid, t->iov, n, (unsigned char *)p->payload, len, 1) == (ssize_t)len) {
            e->undo = old;
            e->undo_len = len;
        } else
            free(old);
    }
    if (p->length >= 0 && (uint64_t)p->length < e->want_len) { /* a short write */
        if (!array_at) {
            regs_arg(&r, 2, (uint64_t)p->length);
            e->restore_args = 1;
            regs_put(e->tid, &r);
        } else if (n) { /* shorten the iovec array itself; put back at exit */
            size_t bytes = n * sizeof(struct iovec);
            struct iovec *shorter = malloc(bytes);
            unsigned char *old = malloc(bytes);
            if (shorter && old && peek(e->tid, old, array_at, bytes) == (ssize_t)bytes) {
                uint64_t left = (uint64_t)p->length;
                for (size_t i = 0; i < n; i++) {
                    shorter[i] = t->iov[i];
                    shorter[i].iov_len = t->iov[i].iov_len < left ? t->iov[i].iov_len : (size_t)left;
                    left -= shorter[i].iov_len;
                }
                struct iovec l = {shorter, bytes}, rr = {(void *)(uintptr_t)array_at, bytes};
                if (process_vm_writev(e->tid, &l, 1, &rr, 1, 0) == (ssize_t)bytes) {
                    e->undo_iov = old;
                    e->undo_iov_len = bytes;
                    e->undo_at = array_at;
                    old = NULL;
                }
            }
            free(shorter);
            free(old);
        }
    }
    e->copies_left = p->copies > 1 ? p->copies - 1 : 0;
}

/* A receive's decision, at its exit; returns 1 when the thread was sent back into a syscall. */
static int exit_planned(Tracer *t, Tracee *e, const Plan *p) {
    Regs r;
    if (!p || regs_get(e->tid, &r) != 0) return 0;
    int64_t ret = e->exit_ret;
    int fd = (int)e->args[0];
    if (p->err) {
        ret = -(int64_t)p->err;
    } else if (p->skip) { /* its data is gone: the call runs again and waits for the next */
        regs_rewind(&r, e->nr, fd);
        regs_put(e->tid, &r);
        return 1;
    } else if (p->close) { /* shutdown/close runs in its place, then the program reads EOF */
        e->saved = r;
        regs_rewind(&r, close_call(e, fd), fd);
        regs_arg(&r, 1, SHUT_RDWR);
        regs_put(e->tid, &r);
        e->rerun = RERUN_INJECT;
        e->forced = 0;
        e->in_syscall = 1;
        return 1;
    } else {
        if (p->payload_len) {
            uint64_t array_at;
            size_t n = call_iovecs(t, e, &array_at);
            size_t len = p->payload_len < (uint64_t)ret ? p->payload_len : (size_t)ret;
            move_span(e->tid, t->iov, n, (unsigned char *)p->payload, len, 1);
        }
        if (p->length >= 0 && p->length < ret) ret = p->length; /* a short read */
    }
    regs_ret(&r, ret);
    regs_put(e->tid, &r);
    return 0;
}

/* Carries out the decision of a stopped thread (now, or when its delay is over) and resumes it. */
static void carry_out(Tracer *t, Tracee *e) {
    int stage = e->awaiting;
    Plan *p = e->plan;
    e->awaiting = 0;
    e->release = 0;
    e->plan = NULL;
    if (stage == STOP_ENTRY)
        enter_planned(t, e, p);
    else if (stage == STOP_EXIT) {
        e->decide_exit = 0;
        exit_planned(t, e, p);
    }
    free(p);
    resume(t, e, 0);
}

/* Held threads whose delay is over go on. */
static void release_due(Tracer *t) {
    if (!t->nheld) return;
    uint64_t now = now_ns();
    size_t keep = 0;
    for (size_t i = 0; i < t->nheld; i++) {
        Tracee *e = find(t, t->held[i]);
        if (!e || !e->release) continue; /* ended meanwhile */
        if (e->release <= now)
            carry_out(t, e);
        else
            t->held[keep++] = t->held[i];
    }
    t->nheld = keep;
}

static void mark(Tracer *t, size_t from, uint16_t flag) {
    for (size_t at = from; at < t->len; at += ((Event *)(t->buf + at))->size) ((Event *)(t->buf + at))->flags |= flag;
}

/* A syscall's exit stop: the decision's remaining parts, the event, and on. Returns -1 when out of memory. */
static int on_exit_stop(Tracer *t, Tracee *e, int64_t ret, int record) {
    Regs r;
    if (e->rerun == RERUN_INJECT) { /* the shutdown/close put in a receive's place returned */
        r = e->saved;
        regs_ret(&r, e->forced);
        regs_put(e->tid, &r);
        e->rerun = 0;
        resume(t, e, 0);
        return 0;
    }
    if (e->skipped) { /* Python recorded it when it decided */
        if (regs_get(e->tid, &r) == 0) {
            regs_keep_args(&r, &e->saved);
            regs_ret(&r, e->forced);
            regs_put(e->tid, &r);
        }
        e->skipped = e->restore_args = 0;
        forget_decision(e);
        resume(t, e, 0);
        return 0;
    }
    if (e->decide_exit) {
        e->decide_exit = 0;
        if (record && ret > 0) {
            size_t at = t->len;
            if (emit_exit(t, e, ret) < 0) return -1;
            Event *ev = t->len > at ? (Event *)(t->buf + at) : NULL;
            if (ev && (S_ISFIFO(ev->mode[0]) || S_ISSOCK(ev->mode[0]))) {
                ev->flags |= FLAG_DECIDE;
                e->awaiting = STOP_EXIT;
                e->exit_ret = ret;
                t->asked = 1;
                return 0; /* stays stopped until decide() */
            }
            resume(t, e, 0);
            return 0;
        }
    }
    if (record) {
        size_t at = t->len;
        if (emit_exit(t, e, ret) < 0) return -1;
        if (e->rerun == RERUN_COPY) mark(t, at, FLAG_COPY);
    }
    if (e->copies_left > 0 && ret >= 0 && regs_get(e->tid, &r) == 0) { /* the same send once more */
        if (e->rerun != RERUN_COPY) e->forced = ret;
        e->copies_left--;
        e->rerun = RERUN_COPY;
        regs_rewind(&r, e->nr, e->args[0]);
        regs_put(e->tid, &r);
        e->in_syscall = 1;
        resume(t, e, 0);
        return 0;
    }
    e->copies_left = 0;
    int fix = 0;
    if (e->rerun == RERUN_COPY) { /* the program sees the first run's result */
        ret = e->forced;
        e->rerun = 0;
        fix = 1;
    }
    if (e->undo_at) {
        struct iovec l = {e->undo_iov, e->undo_iov_len}, rr = {(void *)(uintptr_t)e->undo_at, e->undo_iov_len};
        process_vm_writev(e->tid, &l, 1, &rr, 1, 0);
    }
    if (e->undo) {
        uint64_t array_at;
        size_t n = call_iovecs(t, e, &array_at);
        move_span(e->tid, t->iov, n, e->undo, e->undo_len, 1);
    }
    if ((fix || e->restore_args) && regs_get(e->tid, &r) == 0) {
        if (e->restore_args) regs_keep_args(&r, &e->saved);
        if (fix) regs_ret(&r, ret);
        regs_put(e->tid, &r);
    }
    e->restore_args = 0;
    forget_decision(e);
    resume(t, e, 0);
    return 0;
}

/* ------------------------------------------------------------------ stops */

static void resume(Tracer *t, Tracee *e, int sig) {
    if (t->detaching) {
        ptrace(PTRACE_DETACH, e->tid, 0, (void *)(intptr_t)sig);
        drop(t, e->tid);
        return;
    }
    ptrace(t->every_syscall || e->in_syscall ? PTRACE_SYSCALL : PTRACE_CONT, e->tid, 0, (void *)(intptr_t)sig);
}

static int data_call(const Syscall *sc) {
    return sc->shape == S_BUF || sc->shape == S_IOV || sc->shape == S_MSG || sc->shape == S_MMSG;
}

/* An IPC syscall entered (its seccomp stop, or the entry stop of an attached process): e->nr, e->args
 * are set. Decides whether its exit is worth a stop. Returns -1 when out of memory, 1 when the thread
 * waits for a decision (it must not be resumed). */
static int entered(Tracer *t, Tracee *e) {
    const Syscall *sc = lookup_syscall(e->nr);
    e->ts_entry = now_ns();
    e->in_syscall = 0;
    if (!sc) return 0;
    uint64_t ino = 0, dev = 0;
    uint32_t mode = 0;
    if (data_call(sc) && fd_lookup(e, (int)e->args[0], &ino, &dev, &mode, 0) && !is_channel(mode))
        return 0; /* a file, a terminal, ...: nothing a channel carries */
    if (e->nr == SYS_close) {
        int fd = (int)e->args[0];
        Proc *p = e->proc;
        /* an fd only ever met at a skipped data call: no event named it, the channel table does not hold it */
        int known_other = p && fd >= 0 && fd < p->nfds && p->fds[fd].known && !p->fds[fd].reported;
        fd_forget(p, fd);
        if (known_other) return 0;
        Event *ev = simple_event(t, EV_SYSCALL, e, e->tid);
        if (!ev) return -1;
        ev->ts = e->ts_entry;
        ev->ts_entry = e->ts_entry;
        ev->nr = e->nr;
        memcpy(ev->args, e->args, sizeof ev->args);
        return 0;
    }
    e->in_syscall = 1;
    int asked = ask_at_entry(t, e, sc);
    if (asked) return asked; /* 1: it waits for decide(), not resumed */
    if (sc->writes) {
        Event *ev = simple_event(t, EV_ENTRY, e, e->tid);
        if (!ev) return -1;
        ev->ts = e->ts_entry;
        ev->nr = e->nr;
        memcpy(ev->args, e->args, sizeof ev->args);
    }
    return 0;
}

/* Handles one wait status; returns -1 when out of memory. */
static int handle(Tracer *t, pid_t tid, int status) {
    Tracee *e = find(t, tid);
    int record = atomic_load_explicit(&t->record, memory_order_relaxed);
    if (WIFEXITED(status) || WIFSIGNALED(status)) {
        Event *ev = simple_event(t, EV_EXIT, e, tid);
        if (!ev) return -1;
        ev->ret = status;
        if (tid == t->main_pid) atomic_store(&t->main_status, status);
        if (e) drop(t, tid);
        return 0;
    }
    if (!WIFSTOPPED(status)) return 0;
    if (!e && !(e = add(t, tid))) return -1;
    int sig = WSTOPSIG(status);
    int event = (unsigned)status >> 16;
    struct __ptrace_syscall_info info;
    if (sig == (SIGTRAP | 0x80)) {
        long got = ptrace(PTRACE_GET_SYSCALL_INFO, tid, (void *)sizeof info, &info);
        if (got > 0 && info.op == PTRACE_SYSCALL_INFO_EXIT && e->in_syscall) {
            e->in_syscall = 0;
            return on_exit_stop(t, e, info.exit.rval, record);
        } else if (got > 0 && info.op == PTRACE_SYSCALL_INFO_ENTRY && t->every_syscall && record && !e->rerun) {
            /* attached without a filter: the entry stop plays the seccomp stop's part */
            e->nr = (int64_t)info.entry.nr;
            for (int i = 0; i < 6; i++) e->args[i] = (int64_t)info.entry.args[i];
            int r = entered(t, e);
            if (r) return r < 0 ? -1 : 0;
        }
        resume(t, e, 0);
        return 0;
    }
    if (sig == SIGTRAP && event == PTRACE_EVENT_SECCOMP) {
        if (e->rerun) { /* a call the tracer put there: straight to its exit */
            resume(t, e, 0);
            return 0;
        }
        if (!record) { /* the call runs as if untraced */
            e->in_syscall = 0;
            resume(t, e, 0);
            return 0;
        }
        long got = ptrace(PTRACE_GET_SYSCALL_INFO, tid, (void *)sizeof info, &info);
        e->in_syscall = 0;
        if (got > 0 && info.op == PTRACE_SYSCALL_INFO_SECCOMP) {
            e->nr = (int64_t)info.seccomp.nr;
            for (int i = 0; i < 6; i++) e->args[i] = (int64_t)info.seccomp.args[i];
            int r = entered(t, e);
            if (r) return r < 0 ? -1 : 0;
        }
        resume(t, e, 0);
        return 0;
    }
    if (sig == SIGTRAP && (event == PTRACE_EVENT_FORK || event == PTRACE_EVENT_VFORK || event == PTRACE_EVENT_CLONE)) {
        unsigned long child = 0;
        ptrace(PTRACE_GETEVENTMSG, tid, 0, &child);
        Event *ev = simple_event(t, EV_FORK, e, tid);
        if (!ev) return -1;
        ev->nr = event;
        ev->args[0] = (int64_t)child;
        ev->args[1] = (int64_t)read_tgid((pid_t)child);
        if (event == PTRACE_EVENT_CLONE && ev->args[1] != e->tgid) {
            /* a process made by clone() may share its fd table with its parent: neither caches it */
            Proc *other = proc_of(t, (pid_t)ev->args[1]);
            if (!other) return -1;
            other->nocache = 1; /* its Tracee, added at its first stop, holds it */
            e->proc->nocache = 1;
            fd_forget_range(e->proc, 0, UINT64_MAX);
        }
        resume(t, e, 0);
        return 0;
    }
    if (sig == SIGTRAP && event == PTRACE_EVENT_EXEC) {
        unsigned long former = 0;
        ptrace(PTRACE_GETEVENTMSG, tid, 0, &former);
        if ((pid_t)former != tid) { /* a thread other than the leader exec'd: it is the leader now */
            Tracee *old = find(t, (pid_t)former);
            if (old) {
                e->in_syscall = old->in_syscall;
                e->nr = old->nr;
                memcpy(e->args, old->args, sizeof e->args);
                e->ts_entry = old->ts_entry;
                drop(t, (pid_t)former);
            }
        }
        fd_forget_range(e->proc, 0, UINT64_MAX); /* its close-on-exec fds are closed */
        /* who it is now, read while it is stopped: it may be gone before Python asks */
        char path[64], exe[4096], comm[64];
        struct stat st;
        snprintf(path, sizeof path, "/proc/%d/exe", tid);
        ssize_t exe_len = readlink(path, exe, sizeof exe);
        if (exe_len < 0) exe_len = 0;
        snprintf(path, sizeof path, "/proc/%d/comm", tid);
        ssize_t comm_len = 0;
        int fd = open(path, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            comm_len = read(fd, comm, sizeof comm);
            close(fd);
            if (comm_len < 0) comm_len = 0;
            while (comm_len > 0 && comm[comm_len - 1] == '\n') comm_len--;
        }
        snprintf(path, sizeof path, "/proc/%d", tid);
        Event *ev = reserve(t, (size_t)(exe_len + comm_len));
        if (!ev) return -1;
        ev->kind = EV_EXEC;
        ev->tid = tid;
        ev->pid = e->tgid;
        ev->ts = now_ns();
        ev->fds[0] = ev->fds[1] = -1;
        ev->args[0] = (int64_t)former;
        ev->args[1] = stat(path, &st) == 0 ? (int64_t)st.st_uid : -1;
        ev->addr_len = (uint16_t)comm_len;
        ev->payload_len = (uint32_t)exe_len;
        memcpy(ev + 1, comm, (size_t)comm_len);
        memcpy((char *)(ev + 1) + comm_len, exe, (size_t)exe_len);
        resume(t, e, 0);
        return 0;
    }
    if (sig == SIGTRAP && event == PTRACE_EVENT_EXIT) {
        resume(t, e, 0);
        return 0;
    }
    if (event == PTRACE_EVENT_STOP) {
        if (!t->detaching && (sig == SIGSTOP || sig == SIGTSTP || sig == SIGTTIN || sig == SIGTTOU))
            ptrace(PTRACE_LISTEN, tid, 0, 0); /* group-stop: stay stopped until SIGCONT */
        else
            resume(t, e, 0); /* attached, or woken from a group-stop */
        return 0;
    }
    resume(t, e, sig); /* a signal for the tracee: deliver it */
    return 0;
}

/* ------------------------------------------------------------------ the loop thread */

static int sigwake(void) { return SIGRTMIN + 3; } /* interrupts the loop thread's waitpid for a command */

static void on_wake(int sig) { (void)sig; }

static void tracer_free(Tracer *t) {
    for (size_t i = 0; i < TABLE; i++)
        while (t->table[i]) drop(t, t->table[i]->tid);
    for (size_t i = 0; i < TABLE; i++)
        while (t->procs[i]) {
            Proc *p = t->procs[i];
            t->procs[i] = p->next;
            free(p->fds);
            free(p);
        }
    for (size_t i = 0; i < t->dq_len; i++) free(t->dq[i].plan);
    free(t->dq);
    free(t->buf);
    free(t->out);
    free(t->spare);
    free(t->scratch);
    free(t->iov);
    free(t->seen);
    free(t->start_path);
    free_strings(t->start_argv);
    free_strings(t->start_envp);
    if (t->diag >= 0) close(t->diag);
    if (t->efd >= 0) close(t->efd);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cond);
    free(t);
}

static void tracer_unref(Tracer *t) {
    pthread_mutex_lock(&t->mu);
    int left = --t->refs;
    pthread_mutex_unlock(&t->mu);
    if (!left) tracer_free(t);
}

static void wake_python(Tracer *t) {
    uint64_t one = 1;
    if (write(t->efd, &one, sizeof one) < 0) { /* the counter is saturated: wait() is awake anyway */
    }
}

/* Hands the loop thread's events over to wait(); waits while Python lags by PENDING_LIMIT. */
static void publish(Tracer *t) {
    if (!t->len) return;
    int wake = 0;
    pthread_mutex_lock(&t->mu);
    while (!t->orphaned && t->out_len >= PENDING_LIMIT) pthread_cond_wait(&t->cond, &t->mu);
    if (!t->orphaned) {
        if (t->out_len + t->len > t->out_cap) {
            size_t cap = t->out_cap ? t->out_cap : 1u << 16;
            while (cap < t->out_len + t->len) cap *= 2;
            char *grown = realloc(t->out, cap);
            if (!grown) {
                t->nomem = 1;
                atomic_store(&t->record, 0);
                pthread_mutex_unlock(&t->mu);
                t->len = 0;
                wake_python(t);
                return;
            }
            t->out = grown;
            t->out_cap = cap;
        }
        memcpy(t->out + t->out_len, t->buf, t->len);
        if (!t->out_len) {
            t->out_since = now_ns();
            wake = t->py_waiting;
        }
        t->out_len += t->len;
        if (t->out_len >= WAKE_AT && t->py_waiting) wake = 1;
        if (t->asked) { /* a thread waits for Python: no lingering */
            t->urgent = 1;
            if (t->py_waiting) wake = 1;
        }
    }
    pthread_mutex_unlock(&t->mu);
    t->len = 0;
    t->asked = 0;
    if (wake) wake_python(t);
}

static void run_commands(Tracer *t) {
    int cmd = atomic_exchange(&t->commands, 0);
    if (cmd & CMD_DECIDE) {
        pthread_mutex_lock(&t->mu);
        Decision *q = t->dq;
        size_t n = t->dq_len;
        t->dq = NULL;
        t->dq_len = t->dq_cap = 0;
        pthread_mutex_unlock(&t->mu);
        for (size_t i = 0; i < n; i++) {
            Tracee *e = find(t, q[i].tid);
            if (!e || !e->awaiting || e->release) { /* ended meanwhile, or released */
                free(q[i].plan);
                continue;
            }
            free(e->plan);
            e->plan = q[i].plan;
            if (e->plan->delay_ns && t->nheld < MAX_HELD) { /* held: carried out when the time comes */
                e->release = now_ns() + e->plan->delay_ns;
                t->held[t->nheld++] = e->tid;
            } else
                carry_out(t, e);
        }
        free(q);
    }
    if (cmd & CMD_RELEASE) /* no one will decide now: a waiting call runs unchanged */
        for (size_t i = 0; i < TABLE; i++)
            for (Tracee *e = t->table[i]; e; e = e->next)
                if (e->awaiting && !e->release) {
                    free(e->plan);
                    e->plan = NULL;
                    carry_out(t, e);
                }
    if (cmd & CMD_DETACH) {
        t->detaching = 1;
        for (size_t i = 0; i < TABLE; i++)
            for (Tracee *e = t->table[i]; e; e = e->next) ptrace(PTRACE_INTERRUPT, e->tid, 0, 0);
    }
}

/* Services every stop until no tracee is left. */
static void run(Tracer *t) {
    for (;;) {
        run_commands(t);
        release_due(t);
        int status;
        int holding = t->nheld > 0; /* a held thread's time must not wait for another's stop */
        pid_t tid = waitpid(-1, &status, __WALL | __WNOTHREAD | (holding ? WNOHANG : 0));
        if (tid == 0) {
            publish(t);
            struct timespec step = {0, (long)HELD_POLL_NS};
            nanosleep(&step, NULL); /* a command's signal cuts it short */
            continue;
        }
        if (tid < 0) {
            if (errno == EINTR) continue;
            break; /* ECHILD: nothing left to trace */
        }
        if (handle(t, tid, status) < 0) {
            pthread_mutex_lock(&t->mu);
            t->nomem = 1;
            pthread_mutex_unlock(&t->mu);
            atomic_store(&t->record, 0); /* keep servicing the stops: the programs must not hang */
        }
        publish(t);
    }
    publish(t);
}

static int arg_filtered(int nr) {
    for (size_t j = 0; j < N_ARG_FILTERS; j++)
        if (ARG_FILTERS[j].nr == nr) return 1;
    return 0;
}

/* The filter: SECCOMP_RET_TRACE for the IPC syscalls (for those of ARG_FILTERS only when the flag is
 * set), SECCOMP_RET_ALLOW for the rest. BPF jumps only forward, so the argument tests follow the table:
 *   arch check, nr load, [x32 check], one JEQ per syscall -> TRACE, one JEQ per argument test -> its block,
 *   ALLOW, the blocks (load the argument, JSET mask -> TRACE else ALLOW), ALLOW, TRACE. */
static int install_filter(void) {
    struct sock_filter prog[N_SYSCALLS + 10 + 3 * N_ARG_FILTERS];
    size_t generic = 0;
    for (size_t i = 0; i < N_SYSCALLS; i++) generic += !arg_filtered(SYSCALLS[i].nr);
#if defined(__x86_64__)
    size_t head = 5;
#else
    size_t head = 4;
#endif
    size_t first_allow = head + generic + N_ARG_FILTERS;
    size_t allow_at = first_allow + 1 + 2 * N_ARG_FILTERS, trace_at = allow_at + 1;
    size_t n = 0;
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, arch));
    prog[n++] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, NATIVE_ARCH, 1, 0);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW); /* a foreign arch runs free */
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr));
#if defined(__x86_64__)
    prog[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JGE | BPF_K, 0x40000000u, (unsigned char)(first_allow - n - 1),
                                           0); /* x32 */
    n++;
#endif
    for (size_t i = 0; i < N_SYSCALLS; i++) {
        if (arg_filtered(SYSCALLS[i].nr)) continue;
        prog[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)SYSCALLS[i].nr,
                                               (unsigned char)(trace_at - n - 1), 0);
        n++;
    }
    for (size_t j = 0; j < N_ARG_FILTERS; j++) {
        size_t block = first_allow + 1 + 2 * j;
        prog[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (unsigned)ARG_FILTERS[j].nr,
                                               (unsigned char)(block - n - 1), 0);
        n++;
    }
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    for (size_t j = 0; j < N_ARG_FILTERS; j++) {
        /* the argument's low 32 bits (both architectures are little-endian) */
        prog[n++] = (struct sock_filter)BPF_STMT(BPF_LD | BPF_W | BPF_ABS,
                                                 offsetof(struct seccomp_data, args) + 8 * (unsigned)ARG_FILTERS[j].arg);
        prog[n] = (struct sock_filter)BPF_JUMP(BPF_JMP | BPF_JSET | BPF_K, ARG_FILTERS[j].mask,
                                               (unsigned char)(trace_at - n - 1), (unsigned char)(allow_at - n - 1));
        n++;
    }
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW);
    prog[n++] = (struct sock_filter)BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_TRACE);
    struct sock_fprog fprog = {(unsigned short)n, prog};
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog) == 0) return 0;
    if (errno != EACCES) return -1;
    /* without CAP_SYS_ADMIN a filter needs no_new_privs (setuid programs then run unprivileged) */
    if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0) return -1;
    return (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &fprog);
}

/* fork, attach before the child installs its filter, exec. Returns 0, or -1 with errno. */
static int do_spawn(Tracer *t) {
    int sync[2] = {-1, -1};
    if (pipe2(sync, O_CLOEXEC) != 0) return -1;
    pid_t pid = fork();
    if (pid < 0) {
        int err = errno;
        close(sync[0]);
        close(sync[1]);
        errno = err;
        return -1;
    }
    if (pid == 0) {
        char go = 0;
        sigset_t all;
        sigemptyset(&all);
        signal(sigwake(), SIG_DFL);
        sigprocmask(SIG_SETMASK, &all, NULL);
        signal(SIGPIPE, SIG_DFL); /* Python ignores these; the command must not inherit that */
        signal(SIGXFSZ, SIG_DFL);
        close(sync[1]);
        if (read(sync[0], &go, 1) != 1 || go != 1) _exit(127);
        if (install_filter() != 0) {
            dprintf(2, "ipcproxy: cannot install the seccomp filter: %s\n", strerror(errno));
            _exit(127);
        }
        execve(t->start_path, t->start_argv, t->start_envp);
        dprintf(2, "ipcproxy: cannot run %s: %s\n", t->start_argv[0] ? t->start_argv[0] : t->start_path,
                strerror(errno));
        _exit(127);
    }
    close(sync[0]);
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE |
                PTRACE_O_TRACEEXEC | PTRACE_O_TRACEEXIT | PTRACE_O_TRACESECCOMP;
    if (ptrace(PTRACE_SEIZE, pid, 0, (void *)opts) != 0) {
        int err = errno;
        kill(pid, SIGKILL);
        close(sync[1]);
        waitpid(pid, NULL, __WALL);
        errno = err;
        return -1;
    }
    char go = 1;
    if (write(sync[1], &go, 1) != 1) {
        int err = errno;
        kill(pid, SIGKILL);
        close(sync[1]);
        waitpid(pid, NULL, __WALL);
        errno = err;
        return -1;
    }
    close(sync[1]);
    t->main_pid = pid;
    if (!add(t, pid)) {
        errno = ENOMEM;
        return -1;
    }
    t->start_pid = pid;
    return 0;
}

/* Trace a running process (each of its threads) and the children it starts from now on. It has no
 * filter and cannot get one: every syscall stops it, and only the IPC ones are reported. */
static int do_attach(Tracer *t) {
    pid_t pid = t->start_pid;
    long opts = PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEFORK | PTRACE_O_TRACEVFORK | PTRACE_O_TRACECLONE |
                PTRACE_O_TRACEEXEC | PTRACE_O_TRACEEXIT;
    t->every_syscall = 1;
    int added = 1;
    for (int round = 0; added && round < 100; round++) { /* again, for threads started meanwhile */
        char path[64];
        snprintf(path, sizeof path, "/proc/%d/task", pid);
        DIR *dir = opendir(path);
        if (!dir) {
            if (round == 0) {
                snprintf(t->start_file, sizeof t->start_file, "%s", path);
                return -1;
            }
            break;
        }
        added = 0;
        struct dirent *d;
        while ((d = readdir(dir))) {
            pid_t tid = (pid_t)atoi(d->d_name);
            if (tid <= 0 || find(t, tid)) continue;
            if (ptrace(PTRACE_SEIZE, tid, 0, (void *)opts) != 0) {
                if (errno == ESRCH) continue; /* a thread that ended meanwhile */
                int err = errno;
                closedir(dir);
                errno = err;
                return -1;
            }
            if (!add(t, tid)) {
                closedir(dir);
                errno = ENOMEM;
                return -1;
            }
            ptrace(PTRACE_INTERRUPT, tid, 0, 0); /* a stop, from which it resumes stopping at syscalls */
            added = 1;
        }
        closedir(dir);
    }
    t->main_pid = pid;
    return 0;
}

static void *loop_main(void *arg) {
    Tracer *t = arg;
    sigset_t mask;
    sigfillset(&mask);
    sigdelset(&mask, sigwake());
    pthread_sigmask(SIG_SETMASK, &mask, NULL); /* signals are the Python thread's */
    t->loop_tid = (pid_t)syscall(SYS_gettid);
    int ok = (t->start_kind == START_SPAWN ? do_spawn(t) : do_attach(t)) == 0;
    int err = errno;
    if (!ok && t->start_kind == START_ATTACH) /* let go of the threads attached before the failure */
        for (size_t i = 0; i < TABLE; i++)
            for (Tracee *e = t->table[i]; e; e = e->next) ptrace(PTRACE_DETACH, e->tid, 0, 0);
    pthread_mutex_lock(&t->mu);
    t->start_state = ok ? 1 : -1;
    t->start_errno = err;
    pthread_cond_broadcast(&t->cond);
    pthread_mutex_unlock(&t->mu);
    if (ok) run(t);
    pthread_mutex_lock(&t->mu);
    t->finished = 1;
    pthread_mutex_unlock(&t->mu);
    wake_python(t);
    tracer_unref(t);
    return NULL;
}

/* ------------------------------------------------------------------ Python API */

typedef struct {
    PyObject_HEAD
    Tracer *t;
} TracerObject;

static Tracer *tracer_new(unsigned max_payload) {
    Tracer *t = calloc(1, sizeof *t);
    if (!t) return NULL;
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cond, NULL);
    t->refs = 1;
    t->max_payload = max_payload;
    t->main_pid = -1;
    atomic_init(&t->record, 1);
    atomic_init(&t->main_status, -1);
    atomic_init(&t->commands, 0);
    atomic_init(&t->tracees, 0);
    t->scratch = malloc(max_payload ? max_payload : 1);
    t->iov = malloc(MAX_IOV * sizeof(struct iovec));
    t->seen = calloc(SEEN, sizeof *t->seen);
    t->diag = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_SOCK_DIAG);
    t->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (!t->scratch || !t->iov || !t->seen || t->efd < 0) {
        tracer_free(t);
        return NULL;
    }
    return t;
}

static int Tracer_init(TracerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"max_payload", NULL};
    unsigned max_payload = 4096;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "|I", kwlist, &max_payload)) return -1;
    if (max_payload > (64u << 20)) {
        PyErr_SetString(PyExc_ValueError, "max_payload is at most 64 MiB");
        return -1;
    }
    if (self->t && self->t->start_kind != START_NONE) {
        PyErr_SetString(PyExc_RuntimeError, "this tracer has started already");
        return -1;
    }
    if (self->t) tracer_unref(self->t);
    self->t = tracer_new(max_payload);
    if (!self->t) {
        PyErr_NoMemory();
        return -1;
    }
    return 0;
}

static void Tracer_dealloc(TracerObject *self) {
    Tracer *t = self->t;
    if (t) {
        pthread_mutex_lock(&t->mu);
        t->orphaned = 1; /* the loop thread runs on without recording until the programs end */
        atomic_store(&t->record, 0);
        pthread_cond_broadcast(&t->cond);
        int kick = t->start_state == 1 && !t->finished && t->every_syscall;
        if (kick) {
            atomic_fetch_or(&t->commands, CMD_DETACH);
            syscall(SYS_tgkill, getpid(), t->loop_tid, sigwake());
        }
        pthread_mutex_unlock(&t->mu);
        tracer_unref(t);
    }
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Tracer *started(TracerObject *self) {
    if (!self->t) PyErr_SetString(PyExc_RuntimeError, "Tracer.__init__ was not called");
    return self->t;
}

/* Starts the loop thread on t's start request; returns the pid, or NULL with an exception. */
static PyObject *start(Tracer *t, int kind) {
    static int handler_installed;
    if (!handler_installed) {
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_wake; /* no SA_RESTART: the loop thread's waitpid returns EINTR */
        sigemptyset(&sa.sa_mask);
        if (sigaction(sigwake(), &sa, NULL) != 0) return PyErr_SetFromErrno(PyExc_OSError);
        handler_installed = 1;
    }
    t->start_kind = kind;
    pthread_attr_t attr;
    pthread_attr_init(&attr);
    pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
    pthread_mutex_lock(&t->mu);
    t->refs++;
    pthread_mutex_unlock(&t->mu);
    pthread_t thread;
    int err = pthread_create(&thread, &attr, loop_main, t);
    pthread_attr_destroy(&attr);
    if (err) {
        pthread_mutex_lock(&t->mu);
        t->refs--;
        t->start_state = -1;
        t->finished = 1;
        pthread_mutex_unlock(&t->mu);
        errno = err;
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&t->mu);
    while (t->start_state == 0) pthread_cond_wait(&t->cond, &t->mu);
    pthread_mutex_unlock(&t->mu);
    Py_END_ALLOW_THREADS
    if (t->start_state < 0) {
        errno = t->start_errno;
        if (t->start_file[0]) return PyErr_SetFromErrnoWithFilename(PyExc_OSError, t->start_file);
        return PyErr_SetFromErrno(PyExc_OSError);
    }
    return PyLong_FromLong(kind == START_SPAWN ? t->start_pid : t->main_pid);
}

/* spawn(path, argv, env) -> pid: fork, attach before the child installs its filter, exec. */
static PyObject *Tracer_spawn(TracerObject *self, PyObject *args) {
    Tracer *t = started(self);
    PyObject *path_obj, *argv_obj, *env_obj;
    if (!t) return NULL;
    if (t->start_kind != START_NONE) {
        PyErr_SetString(PyExc_RuntimeError, "this tracer already runs a command");
        return NULL;
    }
    if (!PyArg_ParseTuple(args, "O&OO", PyUnicode_FSConverter, &path_obj, &argv_obj, &env_obj)) return NULL;
    char **argv = strings(argv_obj, "argv must be a sequence of bytes");
    char **envp = argv ? strings(env_obj, "env must be a sequence of bytes") : NULL;
    char *path = strdup(PyBytes_AS_STRING(path_obj));
    Py_DECREF(path_obj);
    if (!argv || !envp || !path) {
        if (!PyErr_Occurred()) PyErr_NoMemory();
        free_strings(argv);
        free_strings(envp);
        free(path);
        return NULL;
    }
    t->start_path = path;
    t->start_argv = argv;
    t->start_envp = envp;
    return start(t, START_SPAWN);
}

/* attach(pid): trace a running process (each of its threads) and the children it starts from now on. */
static PyObject *Tracer_attach(TracerObject *self, PyObject *args) {
    Tracer *t = started(self);
    int pid;
    if (!t) return NULL;
    if (!PyArg_ParseTuple(args, "i", &pid)) return NULL;
    if (t->start_kind != START_NONE) {
        PyErr_SetString(PyExc_RuntimeError, "this tracer already traces a command");
        return NULL;
    }
    t->start_pid = pid;
    return start(t, START_ATTACH);
}

/* Swaps ``out`` for an empty buffer (called with mu held); the caller owns what it returns. */
static char *take(Tracer *t, size_t *len, size_t *cap) {
    char *taken = t->out;
    *len = t->out_len;
    *cap = t->out_cap;
    t->out = t->spare;
    t->out_cap = t->spare_cap;
    t->out_len = 0;
    t->spare = NULL;
    t->spare_cap = 0;
    t->urgent = 0;
    pthread_cond_broadcast(&t->cond); /* room again for a loop thread held back */
    return taken;
}

/* Gives a taken buffer back: as the spare, or (``keep``: its events were not handed to Python)
 * in front of what arrived since. Called with mu held. */
static void give_back(Tracer *t, char *buf, size_t len, size_t cap, int keep) {
    if (keep && len) {
        if (len + t->out_len > cap) {
            char *grown = realloc(buf, len + t->out_len);
            if (!grown) {
                free(buf);
                t->nomem = 1;
                return;
            }
            buf = grown;
            cap = len + t->out_len;
        }
        if (t->out_len) memcpy(buf + len, t->out, t->out_len);
        free(t->spare);
        t->spare = t->out;
        t->spare_cap = t->out_cap;
        t->out = buf;
        t->out_cap = cap;
        t->out_len += len;
        return;
    }
    if (!t->spare) {
        t->spare = buf;
        t->spare_cap = cap;
    } else {
        free(buf);
    }
}

/* wait(timeout=None) -> bytes | None: the events the loop thread gathered since the last call,
 * waiting for some (a small batch lingers LINGER_NS to grow); b"" when ``timeout`` seconds pass
 * without any or when a signal arrives (after Python's handlers ran); None once no tracee is left
 * and every event was handed over. */
static PyObject *Tracer_wait(TracerObject *self, PyObject *args) {
    Tracer *t = started(self);
    double timeout = -1;
    PyObject *timeout_obj = Py_None;
    if (!t) return NULL;
    if (!PyArg_ParseTuple(args, "|O", &timeout_obj)) return NULL;
    if (timeout_obj != Py_None) {
        timeout = PyFloat_AsDouble(timeout_obj);
        if (timeout == -1 && PyErr_Occurred()) return NULL;
        if (timeout < 0) timeout = 0;
    }
    if (t->start_state != 1) Py_RETURN_NONE; /* never started: nothing to trace */
    uint64_t deadline = timeout >= 0 ? now_ns() + (uint64_t)(timeout * 1e9) : 0;
    char *taken = NULL;
    size_t len = 0, cap = 0;
    int done = 0, interrupted = 0, nomem = 0;
    Py_BEGIN_ALLOW_THREADS
    pthread_mutex_lock(&t->mu);
    for (;;) {
        uint64_t now = now_ns();
        if (t->out_len && (t->urgent || t->out_len >= WAKE_AT || t->finished || now - t->out_since >= LINGER_NS ||
                           (deadline && now >= deadline))) {
            taken = take(t, &len, &cap);
            break;
        }
        if (t->finished) {
            done = 1;
            break;
        }
        if (deadline && now >= deadline) break;
        int64_t sleep_ns = -1;
        if (t->out_len) sleep_ns = (int64_t)(LINGER_NS - (now - t->out_since));
        else if (deadline) sleep_ns = (int64_t)(deadline - now);
        if (atomic_load(&t->commands)) { /* the loop thread may have missed its wake-up: again */
            syscall(SYS_tgkill, getpid(), t->loop_tid, sigwake());
            if (sleep_ns < 0 || sleep_ns > 10000000) sleep_ns = 10000000;
        }
        t->py_waiting = 1;
        pthread_mutex_unlock(&t->mu);
        struct pollfd pfd = {t->efd, POLLIN, 0};
        struct timespec ts = {(time_t)(sleep_ns / 1000000000), (long)(sleep_ns % 1000000000)};
        int r = ppoll(&pfd, 1, sleep_ns < 0 ? NULL : &ts, NULL);
        int err = errno;
        if (r > 0) {
            uint64_t value;
            if (read(t->efd, &value, sizeof value) < 0) { /* drained by a racing read: fine */
            }
        }
        pthread_mutex_lock(&t->mu);
        t->py_waiting = 0;
        if (r < 0 && err == EINTR) {
            interrupted = 1;
            if (t->out_len) taken = take(t, &len, &cap);
            break;
        }
    }
    nomem = t->nomem;
    t->nomem = 0;
    pthread_mutex_unlock(&t->mu);
    Py_END_ALLOW_THREADS
    if (interrupted && PyErr_CheckSignals() < 0) {
        pthread_mutex_lock(&t->mu);
        give_back(t, taken, len, cap, 1);
        pthread_mutex_unlock(&t->mu);
        return NULL;
    }
    PyObject *result = NULL;
    if (nomem) {
        PyErr_NoMemory();
    } else if (taken) {
        result = PyBytes_FromStringAndSize(taken, (Py_ssize_t)len);
    } else if (done) {
        Py_INCREF(Py_None);
        result = Py_None;
    } else {
        result = PyBytes_FromStringAndSize("", 0);
    }
    if (taken) {
        pthread_mutex_lock(&t->mu);
        give_back(t, taken, len, cap, result == NULL && !nomem);
        pthread_mutex_unlock(&t->mu);
    }
    return result;
}

/* detach_all(): let every tracee go at its next stop (only for attached processes: they have no filter). */
static PyObject *Tracer_detach_all(TracerObject *self, PyObject *unused) {
    Tracer *t = started(self);
    if (!t) return NULL;
    if (!t->every_syscall) {
        PyErr_SetString(PyExc_RuntimeError, "a command started with a filter cannot be detached from");
        return NULL;
    }
    atomic_fetch_or(&t->commands, CMD_DETACH);
    pthread_mutex_lock(&t->mu);
    if (t->start_state == 1 && !t->finished) syscall(SYS_tgkill, getpid(), t->loop_tid, sigwake());
    pthread_mutex_unlock(&t->mu);
    Py_RETURN_NONE;
}

/* kill_all(): SIGKILL to every traced thread group; wait() then reports their ends. */
static PyObject *Tracer_kill_all(TracerObject *self, PyObject *unused) {
    Tracer *t = started(self);
    if (!t) return NULL;
    pthread_mutex_lock(&t->mu);
    for (size_t i = 0; i < TABLE; i++)
        for (Proc *p = t->procs[i]; p; p = p->next) kill(p->tgid, SIGKILL);
    pthread_mutex_unlock(&t->mu);
    Py_RETURN_NONE;
}

/* select(names): the syscalls Python decides about (empty: none); before spawn() or attach(). */
static PyObject *Tracer_select(TracerObject *self, PyObject *arg) {
    Tracer *t = started(self);
    if (!t) return NULL;
    if (t->start_kind != START_NONE) {
        PyErr_SetString(PyExc_RuntimeError, "select() comes before spawn() or attach()");
        return NULL;
    }
    unsigned char want[N_SYSCALLS] = {0};
    int any = 0;
    PyObject *it = PyObject_GetIter(arg), *item;
    if (!it) return NULL;
    while ((item = PyIter_Next(it))) {
        const char *name = PyUnicode_AsUTF8(item);
        size_t i = 0;
        while (name && i < N_SYSCALLS && strcmp(SYSCALLS[i].name, name) != 0) i++;
        if (name && (i == N_SYSCALLS ||
                     (SYSCALLS[i].shape != S_BUF && SYSCALLS[i].shape != S_IOV && SYSCALLS[i].shape != S_MSG)))
            PyErr_Format(PyExc_ValueError, "no decisions about %s: it moves no single message", name);
        Py_DECREF(item);
        if (PyErr_Occurred()) {
            Py_DECREF(it);
            return NULL;
        }
        want[i] = 1;
        any = 1;
    }
    Py_DECREF(it);
    if (PyErr_Occurred()) return NULL;
    memcpy(t->selected, want, sizeof want);
    t->any_selected = any;
    Py_RETURN_NONE;
}

static void command(Tracer *t, int cmd) {
    atomic_fetch_or(&t->commands, cmd);
    pthread_mutex_lock(&t->mu);
    if (t->start_state == 1 && !t->finished) syscall(SYS_tgkill, getpid(), t->loop_tid, sigwake());
    pthread_mutex_unlock(&t->mu);
}

/* decide(tid, errno=0, skip=False, close=False, delay=0.0, payload=None, length=-1, copies=1):
 * what happens to the call thread ``tid`` waits with (carried out by the loop thread). */
static PyObject *Tracer_decide(TracerObject *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"tid", "errno", "skip", "close", "delay", "payload", "length", "copies", NULL};
    Tracer *t = started(self);
    int tid, err = 0, skip = 0, close_ = 0, copies = 1;
    double delay = 0.0;
    Py_buffer payload = {0};
    long long length = -1;
    if (!t) return NULL;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "i|ippdz*Li", kwlist, &tid, &err, &skip, &close_, &delay, &payload,
                                     &length, &copies))
        return NULL;
    if (err < 0 || err > 4095 || delay < 0 || delay > 3600 || copies < 1 || copies > 1000) {
        PyBuffer_Release(&payload);
        PyErr_SetString(PyExc_ValueError, "errno, delay (s) or copies out of range");
        return NULL;
    }
    size_t plen = payload.buf ? (size_t)payload.len : 0;
    Plan *p = malloc(sizeof *p + (plen ? plen : 1));
    if (!p) {
        PyBuffer_Release(&payload);
        return PyErr_NoMemory();
    }
    p->err = err;
    p->skip = skip;
    p->close = close_;
    p->copies = copies;
    p->length = length;
    p->delay_ns = (uint64_t)(delay * 1e9);
    p->payload_len = plen;
    if (plen) memcpy(p->payload, payload.buf, plen);
    PyBuffer_Release(&payload);
    pthread_mutex_lock(&t->mu);
    if (t->dq_len == t->dq_cap) {
        size_t cap = t->dq_cap ? t->dq_cap * 2 : 16;
        Decision *grown = realloc(t->dq, cap * sizeof *grown);
        if (!grown) {
            pthread_mutex_unlock(&t->mu);
            free(p);
            return PyErr_NoMemory();
        }
        t->dq = grown;
        t->dq_cap = cap;
    }
    t->dq[t->dq_len++] = (Decision){(pid_t)tid, p};
    pthread_mutex_unlock(&t->mu);
    command(t, CMD_DECIDE);
    Py_RETURN_NONE;
}

static PyObject *Tracer_get_record(TracerObject *self, void *closure) {
    return PyBool_FromLong(self->t && atomic_load(&self->t->record));
}

static int Tracer_set_record(TracerObject *self, PyObject *value, void *closure) {
    int on = value ? PyObject_IsTrue(value) : 0;
    if (on < 0) return -1;
    if (self->t) atomic_store(&self->t->record, on);
    if (self->t && !on) command(self->t, CMD_RELEASE); /* no one will decide now */
    return 0;
}

static PyObject *Tracer_get_status(TracerObject *self, void *closure) {
    int status = self->t ? atomic_load(&self->t->main_status) : -1;
    if (status < 0) Py_RETURN_NONE;
    return PyLong_FromLong(status);
}

static PyObject *Tracer_get_tracees(TracerObject *self, void *closure) {
    return PyLong_FromLong(self->t ? atomic_load(&self->t->tracees) : 0);
}

static PyMethodDef Tracer_methods[] = {
    {"spawn", (PyCFunction)Tracer_spawn, METH_VARARGS, "spawn(path, argv, env) -> pid: run a command traced"},
    {"wait", (PyCFunction)Tracer_wait, METH_VARARGS,
     "wait(timeout=None) -> bytes | None: the events gathered since the last call (None: all ended)"},
    {"kill_all", (PyCFunction)Tracer_kill_all, METH_NOARGS, "SIGKILL every traced process"},
    {"attach", (PyCFunction)Tracer_attach, METH_VARARGS, "attach(pid): trace a running process"},
    {"detach_all", (PyCFunction)Tracer_detach_all, METH_NOARGS, "let every attached process go"},
    {"select", (PyCFunction)Tracer_select, METH_O, "select(names): the syscalls decide() is asked about"},
    {"decide", (PyCFunction)(void (*)(void))Tracer_decide, METH_VARARGS | METH_KEYWORDS,
     "decide(tid, errno=0, skip=False, close=False, delay=0.0, payload=None, length=-1, copies=1)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef Tracer_getset[] = {
    {"record", (getter)Tracer_get_record, (setter)Tracer_set_record, "report IPC syscalls (False: let them run)", NULL},
    {"status", (getter)Tracer_get_status, NULL, "the command's wait status, None while it runs", NULL},
    {"tracees", (getter)Tracer_get_tracees, NULL, "threads traced now", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject TracerType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcproxy.syscall._tracer.Tracer",
    .tp_basicsize = sizeof(TracerObject),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Tracer(max_payload=4096): a command's process tree under ptrace + seccomp",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Tracer_init,
    .tp_dealloc = (destructor)Tracer_dealloc,
    .tp_methods = Tracer_methods,
    .tp_getset = Tracer_getset,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_tracer", NULL, -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__tracer(void) {
    if (PyType_Ready(&TracerType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    PyObject *table = PyDict_New();
    if (!table) goto fail;
    for (size_t i = 0; i < N_SYSCALLS; i++) {
        PyObject *nr = PyLong_FromLong(SYSCALLS[i].nr);
        if (!nr || PyDict_SetItemString(table, SYSCALLS[i].name, nr) < 0) {
            Py_XDECREF(nr);
            Py_DECREF(table);
            goto fail;
        }
        Py_DECREF(nr);
    }
    if (PyModule_AddObject(m, "SYSCALLS", table) < 0) {
        Py_DECREF(table);
        goto fail;
    }
    Py_INCREF(&TracerType);
    if (PyModule_AddObject(m, "Tracer", (PyObject *)&TracerType) < 0) {
        Py_DECREF(&TracerType);
        goto fail;
    }
    if (PyModule_AddStringConstant(m, "ARCH", NATIVE_NAME) < 0 ||
        PyModule_AddIntConstant(m, "EVENT_SIZE", (long)sizeof(Event)) < 0)
        goto fail;
    return m;
fail:
    Py_DECREF(m);
    return NULL;
}
