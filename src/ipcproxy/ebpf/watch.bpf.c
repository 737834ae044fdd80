// SPDX-License-Identifier: GPL-2.0
/* ipcproxy watch: every IPC message of the machine's processes into a ring buffer.
 *
 * Hooks (docs/commands-watch.md, "How it works", says why these):
 *   tp_btf/sys_enter   a write-family call on a pipe, FIFO or socket entered: a small ENTRY event, so
 *                      that user space holds a read that returns before this write's exit is seen
 *   tp_btf/sys_exit    a read/write/send/recv family call returned: the DATA event, with the fd's inode,
 *                      the socket's family, type, peer inode, peer pid and addresses, the payload and the
 *                      number of fds passed (SCM_RIGHTS)
 *   tp_btf/sched_process_fork, _exec, _exit   who the processes are, and when a pid is free again
 * Syscall arguments are read from pt_regs at exit (x86_64 keeps them there), so no map is written
 * per call. BTF-typed hooks load kernel fields directly (bpf_rdonly_cast where a pointer is untyped)
 * instead of a bpf_probe_read_kernel call per field: measured 18 % (pipe) to 50 % (socketpair) less added time. Events the ring buffer cannot take are counted per CPU and reported with that CPU's next
 * event, so the trace says where they were lost.
 *
 * The layout of struct event is mirrored by src/ipcproxy/ebpf/events.py.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include <bpf/bpf_endian.h>

char LICENSE[] SEC("license") = "GPL";

extern void *bpf_rdonly_cast(const void *obj, __u32 btf_id) __ksym;  /* an untyped pointer as a BTF one */

#define CAP (256 << 10)       /* the most payload one event carries (a power of two): --max-payload's limit */
#define AREA 336              /* a socket's addresses: local[112] peer[112] msgaddr[112] */
#define ALEN 112
#define MAX_IOV 8             /* iovecs copied inline; the rest (up to UIO_MAXIOV) by a bpf_loop */
#define UIO_MAXIOV 1024
#define MAX_MMSG 1024
#define MQUEUE_MAGIC 0x19800202
#define TS_COMPAT 0x0002
#define PIPEFS_MAGIC 0x50495045
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFIFO 0010000

enum kind { K_DATA = 1, K_ENTRY = 2, K_FORK = 3, K_EXEC = 4, K_EXIT = 5, K_PROC = 6, K_MSGGET = 7 };
enum call { C_READ = 1, C_WRITE, C_READV, C_WRITEV, C_SENDTO, C_RECVFROM, C_SENDMSG, C_RECVMSG,
	    C_PREADV2, C_PWRITEV2, C_SENDMMSG, C_RECVMMSG, C_MQSEND, C_MQRECV, C_MSGSND, C_MSGRCV };
enum transport { T_PIPE = 1, T_FIFO = 2, T_UNIX = 4, T_TCP = 8, T_UDP = 16, T_MQ = 32, T_SYSV = 64 };
enum flag { F_PIPEFS = 1, F_AREA = 2, F_FAILED_READ = 4 };
enum filter { W_PID = 1, W_COMM = 2, W_CGROUP = 4, W_EXE = 8 };

struct event {
	__u32 size;      /* header + area + payload, not rounded */
	__u16 kind;
	__u16 call;
	__u32 tid;
	__u32 pid;
	__u64 ts;
	__s64 ret;
	__u64 arg2;      /* recvmsg flags; fork: the new task's tid */
	__u64 arg3;      /* recvfrom flags; fork: the new task's thread group */
	__u64 ino;
	__u64 peer_ino;
	__u32 dev;
	__u32 mode;
	__s32 fd;        /* msgsnd/msgrcv/msgget: the queue's id */
	__u32 uid;
	__s32 peer_pid;
	__u32 nfds;      /* msgrcv: its flags */
	__u32 plen;      /* payload bytes that follow */
	__u32 lost;      /* events this CPU could not put in the ring buffer since its previous one */
	__u16 domain;
	__u16 socktype;
	__u16 flags;
	__u16 local_len;
	__u16 peer_len;
	__u16 msg_len;
	__u32 pad;
	char comm[16];
};
_Static_assert(sizeof(struct event) == 128, "events.py reads a 128-byte header");

struct config {
	__u32 self;          /* the watcher's own tgid: never recorded */
	__u32 max_payload;
	__u32 transports;    /* bit set of enum transport */
	__u32 filters;       /* bit set of enum filter */
	__u64 cgroup;        /* cgroup v2 id (the directory's inode) */
};

struct exe_key {
	__u64 ino;
	__u32 dev;
	__u32 pad;
};

struct scratch {
	struct event ev;
	char data[AREA + 2 * CAP];
};

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20);
} events SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct config);
} settings SEC(".maps");

/* one per possible CPU (the loader sets the count), indexed by CPU: larger than a per-CPU value may be */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

/* the processes whose identity (exe, start) was sent: kept on the task, so a reused pid is someone new */
struct {
	__uint(type, BPF_MAP_TYPE_TASK_STORAGE);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__type(key, int);
	__type(value, __u8);
} introduced SEC(".maps");

/* [0]: lost since this CPU's last event, [1]: lost in all */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 2);
	__type(key, __u32);
	__type(value, __u64);
} lost SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, __u32);
	__type(value, __u8);
} pids SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, char[16]);
	__type(value, __u8);
} comms SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 256);
	__type(key, struct exe_key);
	__type(value, __u8);
} exes SEC(".maps");

/* inodes never recorded: the watcher's own output pipes and sockets (else its output feeds itself) */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 64);
	__type(key, __u64);
	__type(value, __u8);
} ignored SEC(".maps");

/* sockets whose addresses were sent, with the peer they had: the area goes out once per (socket, peer) */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, __u64);
	__type(value, __u64);
} described SEC(".maps");

static __always_inline struct config *cfg(void)
{
	__u32 zero = 0;
	return bpf_map_lookup_elem(&settings, &zero);
}

static __always_inline struct scratch *this_scratch(void)
{
	__u32 cpu = bpf_get_smp_processor_id();
	return bpf_map_lookup_elem(&scratch, &cpu);
}

static __always_inline int wanted_task(struct config *c, struct task_struct *task, __u32 tgid)
{
	if (tgid == c->self)
		return 0;
	if (!c->filters)
		return 1;
	if ((c->filters & W_PID) && !bpf_map_lookup_elem(&pids, &tgid))
		return 0;
	if (c->filters & W_COMM) {
		char comm[16] = {};
		bpf_get_current_comm(comm, sizeof(comm));  /* every hook runs in the task it asks about */
		if (!bpf_map_lookup_elem(&comms, comm))
			return 0;
	}
	if ((c->filters & W_CGROUP) && bpf_get_current_cgroup_id() != c->cgroup) {
		int found = 0;
		for (int level = 1; level < 16; level++) {
			__u64 id = bpf_get_current_ancestor_cgroup_id(level);
			if (!id)
				break;
			if (id == c->cgroup) {
				found = 1;
				break;
			}
		}
		if (!found)
			return 0;
	}
	if (c->filters & W_EXE) {
		struct exe_key key = {};
		struct inode *inode = BPF_CORE_READ(task, mm, exe_file, f_inode);
		if (!inode)
			return 0;
		key.ino = BPF_CORE_READ(inode, i_ino);
		key.dev = BPF_CORE_READ(inode, i_sb, s_dev);
		if (!bpf_map_lookup_elem(&exes, &key))
			return 0;
	}
	return 1;
}

static __always_inline struct file *fd_file(struct task_struct *task, int fd)
{
	struct fdtable *fdt = task->files->fdt;
	struct file **array;
	struct file *file = NULL;
	if (!fdt || fd < 0 || (unsigned int)fd >= fdt->max_fds)
		return NULL;
	array = fdt->fd;
	bpf_probe_read_kernel(&file, sizeof(file), &array[fd]);
	return file;
}

static __always_inline int is_loopback4(__be32 addr)
{
	return (bpf_ntohl(addr) >> 24) == 127;
}

static __always_inline int is_loopback6(struct in6_addr *a)
{
	__u32 w[4];
	bpf_probe_read_kernel(w, sizeof(w), a);
	if (!w[0] && !w[1] && !w[2] && w[3] == bpf_htonl(1))
		return 1;
	if (!w[0] && !w[1] && w[2] == bpf_htonl(0xffff))
		return is_loopback4(w[3]);
	return 0;
}

static __always_inline int is_any6(struct in6_addr *a)
{
	__u32 w[4];
	bpf_probe_read_kernel(w, sizeof(w), a);
	return !w[0] && !w[1] && (!w[2] || w[2] == bpf_htonl(0xffff)) && !w[3];
}

/* Fills the channel part of ev from the fd; returns the transport bit, 0 for what is not IPC. */
static __always_inline int describe(struct config *c, struct task_struct *task, int fd, struct event *ev,
				    struct sock **out_sk)
{
	struct file *file = fd_file(task, fd);
	struct inode *inode;
	__u32 mode;
	int transport;
	*out_sk = NULL;
	if (!file)
		return 0;
	file = bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file));
	inode = file->f_inode;
	if (!inode)
		return 0;
	mode = inode->i_mode;
	ev->ino = inode->i_ino;
	ev->dev = inode->i_sb->s_dev;
	ev->mode = mode;
	if ((mode & S_IFMT) == S_IFIFO) {
		if (inode->i_sb->s_magic == PIPEFS_MAGIC) {
			ev->flags |= F_PIPEFS;
			transport = T_PIPE;
		} else {
			transport = T_FIFO;
		}
	} else if ((mode & S_IFMT) == S_IFSOCK) {
		struct socket *sock = bpf_rdonly_cast(file->private_data, bpf_core_type_id_kernel(struct socket));
		struct sock *sk = sock->sk;
		__u16 family, type, proto;
		if (!sk)
			return 0;
		family = sk->__sk_common.skc_family;
		type = sk->sk_type;
		proto = sk->sk_protocol;
		ev->domain = family;
		ev->socktype = type;
		if (family == 1) {
			struct unix_sock *us = bpf_rdonly_cast(sk, bpf_core_type_id_kernel(struct unix_sock));
			struct sock *peer = us->peer;
			struct pid *pp = sk->sk_peer_pid;
			if (peer) {
				struct socket *ps = peer->sk_socket;
				if (ps) {
					struct socket_alloc *sa = bpf_rdonly_cast(ps, bpf_core_type_id_kernel(struct socket_alloc));
					ev->peer_ino = sa->vfs_inode.i_ino;
				}
			}
			ev->peer_pid = pp ? pp->numbers[0].nr : -1;
			transport = T_UNIX;
		} else if (family == 2 || family == 10) {
			if (type == 1 && proto == 6)
				transport = T_TCP;
			else if (type == 2 && proto == 17)
				transport = T_UDP;
			else
				return 0;
			/* loopback only: the machine's IPC, not its network traffic */
			if (family == 2) {
				__be32 d = BPF_CORE_READ(sk, __sk_common.skc_daddr);
				__be32 s = BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
				if (d ? !is_loopback4(d) : (s && !is_loopback4(s)))
					return 0;
			} else {
				struct in6_addr d = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr);
				struct in6_addr s = BPF_CORE_READ(sk, __sk_common.skc_v6_rcv_saddr);
				if (!is_any6(&d) ? !is_loopback6(&d) : (!is_any6(&s) && !is_loopback6(&s)))
					return 0;
			}
		} else {
			return 0;
		}
		*out_sk = sk;
	} else {
		return 0;
	}
	if (!(c->transports & transport))
		return 0;
	if (bpf_map_lookup_elem(&ignored, &ev->ino))
		return 0;
	return transport;
}

static __always_inline __u16 inet_addr(struct sock *sk, char *out, int remote)
{
	__u16 family = BPF_CORE_READ(sk, __sk_common.skc_family);
	__u16 port = remote ? BPF_CORE_READ(sk, __sk_common.skc_dport)
			    : bpf_htons(BPF_CORE_READ(sk, __sk_common.skc_num));
	if (family == 2) {
		struct sockaddr_in *a = (struct sockaddr_in *)out;
		a->sin_family = 2;
		a->sin_port = port;
		a->sin_addr.s_addr = remote ? BPF_CORE_READ(sk, __sk_common.skc_daddr)
					    : BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr);
		return remote && !a->sin_addr.s_addr ? 0 : 16;
	}
	struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
	a6->sin6_family = 10;
	a6->sin6_port = port;
	a6->sin6_flowinfo = 0;
	a6->sin6_scope_id = 0;
	if (remote)
		a6->sin6_addr = BPF_CORE_READ(sk, __sk_common.skc_v6_daddr);
	else
		a6->sin6_addr = BPF_CORE_READ(sk, __sk_common.skc_v6_rcv_saddr);
	return remote && is_any6(&a6->sin6_addr) ? 0 : 28;
}

static __always_inline __u16 unix_addr(struct sock *sk, char *out)
{
	struct unix_address *ua;
	int len;
	if (!sk)
		return 0;
	ua = BPF_CORE_READ((struct unix_sock *)sk, addr);
	if (!ua)
		return 0;
	len = BPF_CORE_READ(ua, len);
	if (len <= 0)
		return 0;
	if (len > ALEN)
		len = ALEN;
	barrier_var(len);  /* keep the mask the verifier needs: the compiler knows it is a no-op */
	bpf_probe_read_kernel(out, len & 0x7f, &ua->name);
	return len;
}

/* The socket's own and peer addresses into the area, once per (socket, peer). */
static __always_inline void addresses(struct scratch *s, struct sock *sk)
{
	__u64 *known = bpf_map_lookup_elem(&described, &s->ev.ino);
	if (known && *known == s->ev.peer_ino + 1)
		return;
	__u64 value = s->ev.peer_ino + 1;
	bpf_map_update_elem(&described, &s->ev.ino, &value, BPF_ANY);
	s->ev.flags |= F_AREA;
	if (s->ev.domain == 1) {
		s->ev.local_len = unix_addr(sk, s->data);
		s->ev.peer_len = unix_addr(BPF_CORE_READ((struct unix_sock *)sk, peer), s->data + ALEN);
	} else {
		s->ev.local_len = inet_addr(sk, s->data, 0);
		s->ev.peer_len = inet_addr(sk, s->data + ALEN, 1);
	}
}

static __always_inline __u32 copy_buf(char *dst, const void *src, __u64 want)
{
	__u32 n = want > CAP ? CAP : want;
	if (bpf_probe_read_user(dst, n & (2 * CAP - 1), src))
		return 0;
	return n;
}

struct iov_rest {
	const struct iovec *iov;
	__u64 want;
	__u32 base;  /* where the payload starts in the scratch data: 0, or AREA after a socket's addresses */
	__u32 off;
};

/* One more iovec (past the first MAX_IOV) into the payload, as a bpf_loop step: 1 stops the loop. */
static long copy_iov_step(__u32 i, void *ctx)
{
	struct iov_rest *r = ctx;
	struct scratch *s = this_scratch();
	struct iovec v;
	__u64 n, at;
	if (!s || r->off >= r->want || r->off >= CAP)
		return 1;
	if (bpf_probe_read_user(&v, sizeof(v), &r->iov[i]))
		return 1;
	n = v.iov_len;
	if (n > r->want - r->off)
		n = r->want - r->off;
	at = (__u64)r->base + r->off;
	barrier_var(at);  /* the bound checked on the register that is used (else the compiler checks a copy) */
	if (at > AREA + CAP || n > CAP)
		return 1;
	if (bpf_probe_read_user(s->data + at, n & (2 * CAP - 1), v.iov_base))
		return 1;
	r->off += n;
	return 0;
}

/* The iovecs past the first MAX_IOV (a writev or sendmsg of many pieces): bytes copied in all. */
static __noinline __u32 copy_iov_rest(__u32 base, const struct iovec *iov, __u64 iovcnt, __u64 want, __u32 off)
{
	struct iov_rest r = {.iov = iov + MAX_IOV, .want = want, .base = base, .off = off};
	if (iovcnt > UIO_MAXIOV)
		iovcnt = UIO_MAXIOV;
	if (iovcnt <= MAX_IOV || off >= want)
		return off;
	bpf_loop(iovcnt - MAX_IOV, copy_iov_step, &r, 0);
	return r.off;
}

static __always_inline __u32 copy_iov8(char *dst, const struct iovec *iov, __u64 iovcnt, __u64 want)
{
	__u32 off = 0;
	for (int i = 0; i < MAX_IOV; i++) {
		struct iovec v;
		__u64 n;
		if (i >= iovcnt || off >= want)
			break;
		if (bpf_probe_read_user(&v, sizeof(v), &iov[i]))
			break;
		n = v.iov_len;
		if (n > want - off)
			n = want - off;
		if (off >= CAP || n > CAP)
			break;
		if (bpf_probe_read_user(dst + (off & (CAP - 1)), n & (2 * CAP - 1), v.iov_base))
			break;
		off += n;
	}
	return off;
}

/* ``dst`` is the scratch data at ``base`` (0, or AREA after a socket's addresses). */
static __always_inline __u32 copy_iov(char *dst, const struct iovec *iov, __u64 iovcnt, __u64 want, __u32 base)
{
	__u32 off;
	if (want > CAP)
		want = CAP;
	off = copy_iov8(dst, iov, iovcnt, want);
	if (iovcnt > MAX_IOV)  /* rare: the first MAX_IOV inline, the rest in a loop */
		off = copy_iov_rest(base, iov, iovcnt, want, off);
	return off;
}

/* SCM_RIGHTS fds in a control buffer (user memory). */
static __always_inline __u32 count_fds(const char *control, __u64 len)
{
	__u32 fds = 0;
	__u64 off = 0;
	for (int i = 0; i < 4; i++) {
		struct cmsghdr h;
		if (off + sizeof(h) > len)
			break;
		if (bpf_probe_read_user(&h, sizeof(h), control + off))
			break;
		if (h.cmsg_len < sizeof(h))
			break;
		if (h.cmsg_level == 1 && h.cmsg_type == 1)  /* SOL_SOCKET, SCM_RIGHTS */
			fds += (h.cmsg_len - sizeof(h)) / 4;
		off += (h.cmsg_len + 7) & ~7ULL;
	}
	return fds;
}

static __always_inline int call_of(long nr)
{
	switch (nr) {
	case 0: return C_READ;
	case 1: return C_WRITE;
	case 19: return C_READV;
	case 20: return C_WRITEV;
	case 44: return C_SENDTO;
	case 45: return C_RECVFROM;
	case 46: return C_SENDMSG;
	case 47: return C_RECVMSG;
	case 327: return C_PREADV2;
	case 328: return C_PWRITEV2;
	case 307: return C_SENDMMSG;
	case 299: return C_RECVMMSG;
	case 242: return C_MQSEND;
	case 243: return C_MQRECV;
	case 69: return C_MSGSND;
	case 70: return C_MSGRCV;
	}
	return 0;
}

static __always_inline void emit(struct scratch *s, __u32 size)
{
	__u32 zero = 0, one = 1;
	__u64 *pending = bpf_map_lookup_elem(&lost, &zero);
	s->ev.size = size;
	s->ev.lost = pending ? *pending : 0;
	if (size > sizeof(struct event) + AREA + CAP)
		return;
	if (bpf_ringbuf_output(&events, s, size, BPF_RB_NO_WAKEUP)) {  /* the reader polls */
		__u64 *total = bpf_map_lookup_elem(&lost, &one);
		if (pending)
			*pending += 1;
		if (total)
			*total += 1;
	} else if (pending) {
		*pending = 0;
	}
}

static __always_inline struct scratch *start(__u16 kind)
{
	struct scratch *s = this_scratch();
	__u64 id = bpf_get_current_pid_tgid();
	if (!s)
		return NULL;
	__builtin_memset(&s->ev, 0, sizeof(s->ev));
	s->ev.kind = kind;
	s->ev.tid = (__u32)id;
	s->ev.pid = id >> 32;
	s->ev.ts = bpf_ktime_get_ns();
	s->ev.uid = (__u32)bpf_get_current_uid_gid();
	s->ev.peer_pid = -1;
	bpf_get_current_comm(s->ev.comm, sizeof(s->ev.comm));
	return s;
}

#define ARG0(regs) ((regs)->di)
#define ARG1(regs) ((regs)->si)
#define ARG2(regs) ((regs)->dx)
#define ARG3(regs) ((regs)->r10)
#define ARG4(regs) ((regs)->r8)
#define ARG5(regs) ((regs)->r9)

/* ---------------------------------------------------------------- beyond read/write: kept out of the hot path */

/* A 32-bit program's call: other numbers, other structures (iovecs, msghdrs): not recorded. */
static __always_inline int compat(struct task_struct *task)
{
	return task->thread_info.status & TS_COMPAT;
}

#define PATH_AREA 4096
#define NAME_MAX1 256

struct walk {
	struct dentry *d;
	struct mount *m;
	__u32 off;
};

/* One component of the executable's path (leaf first, each ending in NUL), as a bpf_loop step. */
static long walk_step(__u32 i, void *ctx)
{
	struct walk *w = ctx;
	struct scratch *s = this_scratch();
	struct dentry *d = w->d, *up;
	struct mount *m = w->m;
	long n;
	if (!s || !d || w->off > PATH_AREA - NAME_MAX1)
		return 1;
	if (d == BPF_CORE_READ(m, mnt.mnt_root)) {  /* the top of a mount: on from where it is mounted */
		struct mount *parent = BPF_CORE_READ(m, mnt_parent);
		if (!parent || parent == m)
			return 1;
		w->d = BPF_CORE_READ(m, mnt_mountpoint);
		w->m = parent;
		return 0;
	}
	up = BPF_CORE_READ(d, d_parent);
	if (!up || up == d)
		return 1;
	n = bpf_probe_read_kernel_str(s->data + (w->off & (PATH_AREA - 1)), NAME_MAX1, BPF_CORE_READ(d, d_name.name));
	if (n <= 0)
		return 1;
	w->off += n;
	w->d = up;
	return 0;
}

/* The path of the task's executable into the scratch data (as walk_step writes it); its length. */
static __always_inline __u32 exe_path(struct task_struct *task)
{
	struct walk w = {};
	struct file *exe = BPF_CORE_READ(task, mm, exe_file);
	if (exe) {
		struct vfsmount *mnt = BPF_CORE_READ(exe, f_path.mnt);
		w.d = BPF_CORE_READ(exe, f_path.dentry);
		w.m = (struct mount *)((char *)mnt - bpf_core_field_offset(struct mount, mnt));
		bpf_loop(64, walk_step, &w, 0);
	}
	return w.off;
}

/* The first event of a process (a task that has not been introduced: a pid used again is a new task):
 * who it is, from the kernel, so that a record never names a pid by what /proc says later. */
static __always_inline void introduce(struct config *c, struct task_struct *task)
{
	struct task_struct *leader = task->group_leader;
	struct scratch *s;
	__u32 len;
	if (!leader || bpf_task_storage_get(&introduced, leader, 0, 0))
		return;
	if (!bpf_task_storage_get(&introduced, leader, 0, BPF_LOCAL_STORAGE_GET_F_CREATE))
		return;
	s = start(K_PROC);
	if (!s)
		return;
	len = exe_path(task);
	s->ev.plen = len;
	s->ev.arg2 = BPF_CORE_READ(leader, start_boottime);
	emit(s, sizeof(struct event) + (len & (2 * PATH_AREA - 1)));
}

/* A POSIX message queue's fd: its inode and its name (into the own-address slot). */
static __always_inline int describe_mq(struct config *c, struct task_struct *task, int fd, struct scratch *s)
{
	struct file *file = fd_file(task, fd);
	struct inode *inode;
	long n;
	if (!file || !(c->transports & T_MQ))
		return 0;
	file = bpf_rdonly_cast(file, bpf_core_type_id_kernel(struct file));
	inode = file->f_inode;
	if (!inode || inode->i_sb->s_magic != MQUEUE_MAGIC)
		return 0;
	s->ev.ino = inode->i_ino;
	s->ev.dev = inode->i_sb->s_dev;
	s->ev.mode = inode->i_mode;
	n = bpf_probe_read_kernel_str(s->data, ALEN, BPF_CORE_READ(file, f_path.dentry, d_name.name));
	if (n > 1) {
		s->ev.local_len = n - 1;
		s->ev.flags |= F_AREA;
	}
	return 1;
}

/* mq_timedsend or msgsnd entered: the send may reach a receiver before its exit is seen. */
static __always_inline int queue_enter(struct pt_regs *regs, long nr)
{
	struct config *c = cfg();
	struct task_struct *task;
	struct scratch *s;
	if (!c || !(c->transports & (nr == 69 ? T_SYSV : T_MQ)))
		return 0;
	task = bpf_get_current_task_btf();
	if (compat(task) || !wanted_task(c, task, bpf_get_current_pid_tgid() >> 32))
		return 0;
	s = start(K_ENTRY);
	if (!s)
		return 0;
	s->ev.fd = regs->di;
	s->ev.call = call_of(nr);
	if (nr == 242 && !describe_mq(c, task, s->ev.fd, s))
		return 0;
	s->ev.flags = 0;
	s->ev.local_len = 0;
	emit(s, sizeof(struct event));
	return 0;
}

/* A message queue's send or receive returned, or msgget named a SysV queue (ret: its id). */
static __always_inline int queue_exit(struct pt_regs *regs, long ret)
{
	long nr = regs->orig_ax;
	struct config *c;
	struct task_struct *task;
	struct scratch *s;
	const char *text;
	__u64 len, want;
	__u32 plen;
	if (nr != 242 && nr != 243 && nr != 69 && nr != 70 && nr != 68)
		return 0;
	c = cfg();
	if (!c || !(c->transports & (nr == 242 || nr == 243 ? T_MQ : T_SYSV)))
		return 0;
	task = bpf_get_current_task_btf();
	if (compat(task) || !wanted_task(c, task, bpf_get_current_pid_tgid() >> 32))
		return 0;
	introduce(c, task);
	s = start(nr == 68 ? K_MSGGET : K_DATA);
	if (!s)
		return 0;
	s->ev.fd = ARG0(regs);
	s->ev.ret = ret;
	if (nr == 68) {  /* msgget(key, flags): the key the trace names the queue by */
		s->ev.arg2 = ARG0(regs);
		emit(s, sizeof(struct event));
		return 0;
	}
	s->ev.call = call_of(nr);
	s->ev.arg2 = ARG2(regs);
	s->ev.arg3 = ARG3(regs);
	len = nr == 242 || nr == 69 ? ARG2(regs) : ret;  /* a send returns 0: its length is its argument */
	s->ev.ret = len;
	if (nr == 242 || nr == 243) {
		if (!describe_mq(c, task, s->ev.fd, s))
			return 0;
		text = (const char *)ARG1(regs);
		if (nr == 243 && ARG3(regs)) {  /* the received message's priority, into the datagram-address slot */
			__u32 prio;
			if (!bpf_probe_read_user(&prio, sizeof(prio), (const void *)ARG3(regs))) {
				__builtin_memcpy(s->data + 2 * ALEN, &prio, sizeof(prio));
				s->ev.msg_len = sizeof(prio);
				s->ev.flags |= F_AREA;
			}
		}
	} else {  /* struct msgbuf { long mtype; char mtext[]; }: the type into the datagram-address slot */
		long mtype;
		text = (const char *)ARG1(regs) + sizeof(long);
		if (!bpf_probe_read_user(&mtype, sizeof(mtype), (const void *)ARG1(regs))) {
			__builtin_memcpy(s->data + 2 * ALEN, &mtype, sizeof(mtype));
			s->ev.msg_len = sizeof(mtype);
			s->ev.flags |= F_AREA;
		}
		if (nr == 70)
			s->ev.nfds = ARG4(regs);  /* msgrcv's flags */
	}
	want = len < c->max_payload ? len : c->max_payload;
	if (s->ev.flags & F_AREA)
		plen = copy_buf(s->data + AREA, text, want);
	else
		plen = copy_buf(s->data, text, want);
	if (plen < want)
		s->ev.flags |= F_FAILED_READ;
	s->ev.plen = plen;
	if (s->ev.flags & F_AREA)
		emit(s, sizeof(struct event) + AREA + (plen & (2 * CAP - 1)));
	else
		emit(s, sizeof(struct event) + (plen & (2 * CAP - 1)));
	return 0;
}

struct mmsg_walk {
	__u64 vec;
	__u64 max_payload;
};

/* One message of a sendmmsg/recvmmsg: an event of its own, as a bpf_loop step. */
static long mmsg_step(__u32 i, void *ctx)
{
	struct mmsg_walk *m = ctx;
	struct scratch *s = this_scratch();
	struct mmsghdr h;
	__u32 plen, msglen;
	__u64 want;
	if (!s)
		return 1;
	if (bpf_probe_read_user(&h, sizeof(h), (const void *)(m->vec + (__u64)i * sizeof(h))))
		return 1;
	if (i > 0) {  /* the socket's addresses went with the first */
		s->ev.flags &= ~F_AREA;
		s->ev.local_len = s->ev.peer_len = 0;
	}
	s->ev.flags &= ~F_FAILED_READ;
	s->ev.msg_len = 0;
	s->ev.nfds = 0;
	s->ev.ret = h.msg_len;
	want = h.msg_len < m->max_payload ? h.msg_len : m->max_payload;
	plen = copy_iov(s->data + AREA, h.msg_hdr.msg_iov, h.msg_hdr.msg_iovlen, want, AREA);
	if (plen < want)
		s->ev.flags |= F_FAILED_READ;
	s->ev.plen = plen;
	if (h.msg_hdr.msg_control && h.msg_hdr.msg_controllen)
		s->ev.nfds = count_fds(h.msg_hdr.msg_control, h.msg_hdr.msg_controllen);
	msglen = h.msg_hdr.msg_namelen;
	if (h.msg_hdr.msg_name && msglen > 0 && s->ev.socktype != 1) {
		if (msglen > ALEN)
			msglen = ALEN;
		barrier_var(msglen);
		if (!bpf_probe_read_user(s->data + 2 * ALEN, msglen & 0x7f, h.msg_hdr.msg_name)) {
			s->ev.msg_len = msglen;
			s->ev.flags |= F_AREA;
		}
	}
	if (s->ev.flags & F_AREA) {
		emit(s, sizeof(struct event) + AREA + (plen & (2 * CAP - 1)));
	} else {
		if (plen)
			bpf_probe_read_kernel(s->data, plen & (2 * CAP - 1), s->data + AREA);
		emit(s, sizeof(struct event) + (plen & (2 * CAP - 1)));
	}
	return 0;
}

/* sendmmsg/recvmmsg returned ``ret`` messages: one event each, as sendmsg/recvmsg would give. */
static __always_inline int mmsg_exit(struct pt_regs *regs, int call, long ret)
{
	struct config *c = cfg();
	struct task_struct *task;
	struct scratch *s;
	struct sock *sk;
	struct mmsg_walk m;
	if (!c)
		return 0;
	task = bpf_get_current_task_btf();
	if (compat(task) || !wanted_task(c, task, bpf_get_current_pid_tgid() >> 32))
		return 0;
	introduce(c, task);
	s = start(K_DATA);
	if (!s)
		return 0;
	s->ev.call = call;
	s->ev.fd = ARG0(regs);
	s->ev.arg2 = ARG3(regs);  /* its flags */
	s->ev.arg3 = ARG2(regs);  /* vlen */
	if (!describe(c, task, s->ev.fd, &s->ev, &sk) || !sk)
		return 0;
	addresses(s, sk);
	m.vec = ARG1(regs);
	m.max_payload = c->max_payload;
	bpf_loop(ret < MAX_MMSG ? ret : MAX_MMSG, mmsg_step, &m, 0);
	return 0;
}

SEC("tp_btf/sys_enter")
int BPF_PROG(on_enter, struct pt_regs *regs, long nr)
{
	struct config *c;
	struct task_struct *task;
	struct scratch *s;
	struct sock *sk;
	int call;
	if (nr != 1 && nr != 20 && nr != 44 && nr != 46 && nr != 307 && nr != 328)
		return nr == 242 || nr == 69 ? queue_enter(regs, nr) : 0;
	call = call_of(nr);
	c = cfg();
	if (!c)
		return 0;
	task = bpf_get_current_task_btf();
	if (compat(task) || !wanted_task(c, task, bpf_get_current_pid_tgid() >> 32))
		return 0;
	s = start(K_ENTRY);
	if (!s)
		return 0;
	s->ev.fd = regs->di;
	if (!describe(c, task, s->ev.fd, &s->ev, &sk))
		return 0;
	s->ev.call = call;
	emit(s, sizeof(struct event));
	return 0;
}

SEC("tp_btf/sys_exit")
int BPF_PROG(on_exit, struct pt_regs *regs, long ret)
{
	long nr;
	struct config *c;
	struct task_struct *task;
	struct scratch *s;
	struct sock *sk;
	int call;
	if (ret <= 0)
		return ret == 0 ? queue_exit(regs, 0) : 0;  /* a queue's send and msgget (id 0) return 0 */
	nr = regs->orig_ax;
	call = call_of(nr);
	if (!call)
		return nr == 68 ? queue_exit(regs, ret) : 0;
	if (call >= C_SENDMMSG)
		return call >= C_MQSEND ? queue_exit(regs, ret) : mmsg_exit(regs, call, ret);
	c = cfg();
	if (!c)
		return 0;
	task = bpf_get_current_task_btf();
	if (compat(task) || !wanted_task(c, task, bpf_get_current_pid_tgid() >> 32))
		return 0;
	introduce(c, task);
	s = start(K_DATA);
	if (!s)
		return 0;
	s->ev.call = call;
	s->ev.ret = ret;
	s->ev.fd = ARG0(regs);
	s->ev.arg2 = ARG2(regs);
	s->ev.arg3 = ARG3(regs);
	if (!describe(c, task, s->ev.fd, &s->ev, &sk))
		return 0;
	__u64 want = ret < c->max_payload ? ret : c->max_payload;
	__u64 buf = ARG1(regs);
	const void *msgaddr = NULL;
	__u32 msglen = 0;
	__u32 plen = 0;
	if (sk)
		addresses(s, sk);
	switch (call) {
	case C_READ:
	case C_WRITE:
	case C_SENDTO:
	case C_RECVFROM:
		if (sk)
			plen = copy_buf(s->data + AREA, (const void *)buf, want);
		else
			plen = copy_buf(s->data, (const void *)buf, want);
		if (call == C_SENDTO) {
			msgaddr = (const void *)ARG4(regs);
			msglen = ARG5(regs);
		} else if (call == C_RECVFROM) {
			int *lenp = (int *)ARG5(regs);
			int l = 0;
			msgaddr = (const void *)ARG4(regs);
			if (lenp)
				bpf_probe_read_user(&l, sizeof(l), lenp);
			msglen = l;
		}
		break;
	case C_READV:
	case C_WRITEV:
	case C_PREADV2:
	case C_PWRITEV2:
		if (sk)
			plen = copy_iov(s->data + AREA, (const struct iovec *)buf, ARG2(regs), want, AREA);
		else
			plen = copy_iov(s->data, (const struct iovec *)buf, ARG2(regs), want, 0);
		break;
	case C_SENDMSG:
	case C_RECVMSG: {
		struct user_msghdr m;
		if (bpf_probe_read_user(&m, sizeof(m), (const void *)buf))
			break;
		if (sk)
			plen = copy_iov(s->data + AREA, m.msg_iov, m.msg_iovlen, want, AREA);
		else
			plen = copy_iov(s->data, m.msg_iov, m.msg_iovlen, want, 0);
		if (m.msg_control && m.msg_controllen)
			s->ev.nfds = count_fds(m.msg_control, m.msg_controllen);
		msgaddr = m.msg_name;
		msglen = m.msg_namelen;
		break;
	}
	}
	if (plen < want)
		s->ev.flags |= F_FAILED_READ;
	s->ev.plen = plen;
	if (!sk) {
		emit(s, sizeof(struct event) + (plen & (2 * CAP - 1)));
		return 0;
	}
	/* a datagram's address (unconnected sockets): who it went to, or came from */
	if (msgaddr && msglen > 0 && s->ev.socktype != 1) {
		if (msglen > ALEN)
			msglen = ALEN;
		barrier_var(msglen);
		if (!bpf_probe_read_user(s->data + 2 * ALEN, msglen & 0x7f, msgaddr)) {
			s->ev.msg_len = msglen;
			s->ev.flags |= F_AREA;
		}
	}
	if (s->ev.flags & F_AREA) {
		emit(s, sizeof(struct event) + AREA + (plen & (2 * CAP - 1)));
	} else {
		/* no area: the payload moves down to right after the header */
		if (plen)
			bpf_probe_read_kernel(s->data, plen & (2 * CAP - 1), s->data + AREA);
		emit(s, sizeof(struct event) + (plen & (2 * CAP - 1)));
	}
	return 0;
}

SEC("tp_btf/sched_process_fork")
int BPF_PROG(on_fork, struct task_struct *parent, struct task_struct *child)
{
	struct config *c = cfg();
	struct scratch *s;
	__u32 ptgid = parent->tgid, ctid = child->pid, ctgid = child->tgid;
	if (!c)
		return 0;
	if ((c->filters & W_PID) && ctid == ctgid && bpf_map_lookup_elem(&pids, &ptgid)) {
		__u8 one = 1;
		bpf_map_update_elem(&pids, &ctgid, &one, BPF_ANY);  /* --pid follows its descendants */
	}
	if (!wanted_task(c, parent, ptgid))
		return 0;
	introduce(c, parent);
	s = start(K_FORK);
	if (!s)
		return 0;
	s->ev.pid = ptgid;
	s->ev.arg2 = ctid;
	s->ev.arg3 = ctgid;
	emit(s, sizeof(struct event));
	return 0;
}

SEC("tp_btf/sched_process_exec")
int BPF_PROG(on_exec, struct task_struct *task, pid_t old_pid, struct linux_binprm *bprm)
{
	struct config *c = cfg();
	struct scratch *s;
	if (!c || !wanted_task(c, task, task->tgid))
		return 0;
	s = start(K_EXEC);
	if (!s)
		return 0;
	s->ev.arg2 = old_pid;
	/* the file it runs now (a script's interpreter), as /proc/PID/exe would say: walked, as for K_PROC */
	__u32 len = exe_path(task);
	s->ev.plen = len;
	emit(s, sizeof(struct event) + (len & (2 * PATH_AREA - 1)));
	return 0;
}

SEC("tp_btf/sched_process_exit")
int BPF_PROG(on_exit_task, struct task_struct *task)
{
	struct config *c = cfg();
	struct scratch *s;
	__u32 tgid = task->tgid, tid = task->pid;
	int wanted;
	if (!c)
		return 0;
	wanted = wanted_task(c, task, tgid);
	if ((c->filters & W_PID) && tid == tgid)
		bpf_map_delete_elem(&pids, &tgid);  /* the pid may be reused by anyone */
	if (!wanted)
		return 0;
	s = start(K_EXIT);
	if (!s)
		return 0;
	s->ev.ret = task->exit_code;
	emit(s, sizeof(struct event));
	return 0;
}
