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

#define CAP 8192              /* the most payload one event carries (a power of two; a per-CPU value holds at most 32 KiB) */
#define AREA 336              /* a socket's addresses: local[112] peer[112] msgaddr[112] */
#define ALEN 112
#define MAX_IOV 8
#define PIPEFS_MAGIC 0x50495045
#define S_IFMT 00170000
#define S_IFSOCK 0140000
#define S_IFIFO 0010000

enum kind { K_DATA = 1, K_ENTRY = 2, K_FORK = 3, K_EXEC = 4, K_EXIT = 5 };
enum call { C_READ = 1, C_WRITE, C_READV, C_WRITEV, C_SENDTO, C_RECVFROM, C_SENDMSG, C_RECVMSG };
enum transport { T_PIPE = 1, T_FIFO = 2, T_UNIX = 4, T_TCP = 8, T_UDP = 16 };
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
	__s32 fd;
	__u32 uid;
	__s32 peer_pid;
	__u32 nfds;
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

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct scratch);
} scratch SEC(".maps");

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

static __always_inline __u32 copy_iov(char *dst, const struct iovec *iov, __u64 iovcnt, __u64 want)
{
	__u32 off = 0;
	if (want > CAP)
		want = CAP;
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
	__u32 zero = 0;
	struct scratch *s = bpf_map_lookup_elem(&scratch, &zero);
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

SEC("tp_btf/sys_enter")
int BPF_PROG(on_enter, struct pt_regs *regs, long nr)
{
	struct config *c;
	struct task_struct *task;
	struct scratch *s;
	struct sock *sk;
	int call;
	if (nr != 1 && nr != 20 && nr != 44 && nr != 46)
		return 0;
	call = call_of(nr);
	c = cfg();
	if (!c)
		return 0;
	task = bpf_get_current_task_btf();
	if (!wanted_task(c, task, bpf_get_current_pid_tgid() >> 32))
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
		return 0;
	nr = regs->orig_ax;
	call = call_of(nr);
	if (!call)
		return 0;
	c = cfg();
	if (!c)
		return 0;
	task = bpf_get_current_task_btf();
	if (!wanted_task(c, task, bpf_get_current_pid_tgid() >> 32))
		return 0;
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
		if (sk)
			plen = copy_iov(s->data + AREA, (const struct iovec *)buf, ARG2(regs), want);
		else
			plen = copy_iov(s->data, (const struct iovec *)buf, ARG2(regs), want);
		break;
	case C_SENDMSG:
	case C_RECVMSG: {
		struct user_msghdr m;
		if (bpf_probe_read_user(&m, sizeof(m), (const void *)buf))
			break;
		if (sk)
			plen = copy_iov(s->data + AREA, m.msg_iov, m.msg_iovlen, want);
		else
			plen = copy_iov(s->data, m.msg_iov, m.msg_iovlen, want);
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
	long n = bpf_probe_read_kernel_str(s->data, 4096, BPF_CORE_READ(bprm, filename));
	if (n < 1)
		n = 1;
	s->ev.plen = n - 1;
	emit(s, sizeof(struct event) + ((n - 1) & 4095));
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
