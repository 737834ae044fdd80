/* The proxy's compiled data plane: forwarding and recording of the frames whose header
 * the strict Python path has already checked once.
 *
 * Why: with every message recorded, the proxy's Python per-message work was most of its
 * CPU, and on a machine where client, bus and service share two cores that CPU is what
 * slows the bus down. Here one epoll set carries every authenticated connection; a frame
 * whose header bytes (serials aside) were seen and accepted before is forwarded from the
 * receive buffer as is, and queued for its trace record, without any Python object. Every
 * other frame (the first of each header, anything from or to the bus driver, frames with
 * fds, malformed ones) goes to the Python side (``on_frame``), which parses it strictly,
 * records it, sends it through ``send`` and may teach the plane its header (``learn``).
 * Records are encoded into compact trace lines in bulk (``encode``), in seq order with the
 * records the Python side made, which take their numbers from the same counter
 * (``next_seq``) and which ``encode`` asks Python for where their numbers fall.
 *
 * Forwarding runs on a thread of its own, blocked in epoll_wait without the GIL, so a
 * frame with a known header crosses the proxy without waking Python at all. Everything
 * the plane holds is guarded by one mutex; the thread never takes the GIL and never
 * touches a Python object. What Python must see (frames, closed connections, malformed
 * input) is queued as events, and ``fileno()`` (an eventfd) becomes readable; the side
 * of a connection whose frame waits for Python reads nothing more until Python calls
 * ``resume``, so each direction stays in order. Python objects held for records
 * (header fragments, client endpoints) are only released by calls made with the GIL.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "_args.h"

#define FIXED_HEADER 16
#define MAX_MESSAGE_SIZE (1u << 27)
#define MAX_HEADER_FIELDS (1u << 26)
#define MAX_ARRAY_LENGTH (1u << 26)
#define MAX_UNIX_FDS 253
#define READ_CHUNK (256 * 1024)
#define HIGH_WATER (16u * 1024 * 1024)
#define LOW_WATER (4u * 1024 * 1024)
#define HEAD_LIMIT 4096
#define ARENA_LIMIT (64u * 1024 * 1024) /* forwarding waits for Python to encode beyond this */
#define ARENA_SIGNAL (1u << 20)          /* Python is woken to encode at this much */
#define KIND_NONE 0
#define KIND_BYTES 1
#define KIND_OTHER 2
#define BIG_BODY 16384 /* raw bodies this long go out as a chunk of their own (records.BIG_BODY) */

/* ------------------------------------------------------------------ header cache */

typedef struct Head {
    struct Head *next; /* hash chain */
    uint64_t hash;
    int refs;          /* the cache's own reference, plus one per queued record */
    unsigned char *key;
    size_t key_len;
    long reply_at;     /* offset of the REPLY_SERIAL value, or -1 */
    long body_at;
    int kind;
    int mtype;
    int no_reply;
    char *sig;
    size_t sig_len;
    char *sender_c, *dest_c; /* the same names in UTF-8 (NULL for None), for the forwarding thread */
    PyObject *sender;      /* str or None: whom the endpoints are resolved for */
    PyObject *destination; /* str or None */
    PyObject *facts;       /* what the recorder makes the records' template of (handed back to it) */
} Head;

#define HEAD_BUCKETS 8192

static uint64_t hash_bytes(uint64_t h, const unsigned char *p, size_t n) {
    /* FNV-1a over 8-byte words: headers are short, and this is only a bucket index */
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    while (n--) h = (h ^ *p++) * 0x100000001b3ULL;
    return h;
}

/* The bucket hash of a header key: its first four bytes, then the header fields in up to two runs
 * (around the cut-out REPLY_SERIAL value); frames and learned keys are hashed by the same runs. */
static uint64_t head_hash(const unsigned char *first4, const unsigned char *a, size_t alen, const unsigned char *b,
                          size_t blen) {
    uint64_t h = hash_bytes(0xcbf29ce484222325ULL, first4, 4);
    h = hash_bytes(h, a, alen);
    return hash_bytes(h, b, blen);
}

static void head_release(Head *h) {
    if (--h->refs > 0) return;
    free(h->key);
    free(h->sig);
    free(h->sender_c);
    free(h->dest_c);
    Py_XDECREF(h->sender);
    Py_XDECREF(h->destination);
    Py_XDECREF(h->facts);
    free(h);
}

/* Empty the header cache (with the GIL); records still queued keep their own reference. */
static void heads_forget_all(Head **heads, size_t *count) {
    for (size_t b = 0; b < HEAD_BUCKETS; b++) {
        Head *o = heads[b];
        while (o) {
            Head *next = o->next;
            head_release(o);
            o = next;
        }
        heads[b] = NULL;
    }
    *count = 0;
}

/* ------------------------------------------------------------------ pending calls (latency) */

typedef struct {
    uint32_t serial;   /* 0: empty slot */
    uint8_t to_bus;    /* direction of the call */
    uint8_t dead;      /* tombstone */
    char *name;        /* the caller's unique name for calls to our client, else NULL */
    int64_t ts;
} Pending;

typedef struct {
    Pending *slots;
    size_t cap, used, live;
} PendingTable;

static int name_eq(const char *a, const char *b) {
    if (a == b) return 1;
    if (a == NULL || b == NULL) return 0;
    return strcmp(a, b) == 0;
}

static size_t pending_slot(uint32_t serial, int to_bus, size_t cap) {
    return (size_t)((serial * 2654435761u) ^ (uint32_t)to_bus) & (cap - 1);
}

static int pending_grow(PendingTable *t);

static int pending_put(PendingTable *t, int to_bus, const char *name, uint32_t serial, int64_t ts) {
    if ((t->used + 1) * 2 > t->cap && pending_grow(t) < 0) return -1;
    size_t i = pending_slot(serial, to_bus, t->cap);
    for (;;) {
        Pending *p = &t->slots[i];
        if (p->serial == 0) {
            p->serial = serial;
            p->to_bus = (uint8_t)to_bus;
            p->dead = 0;
            p->name = name ? strdup(name) : NULL;
            if (name && !p->name) {
                p->serial = 0;
                return -1;
            }
            p->ts = ts;
            t->used++;
            t->live++;
            return 0;
        }
        if (!p->dead && p->serial == serial && p->to_bus == to_bus && name_eq(p->name, name)) {
            p->ts = ts; /* a serial reused before its reply: the newer call counts */
            return 0;
        }
        i = (i + 1) & (t->cap - 1);
    }
}

static int64_t pending_take(PendingTable *t, int to_bus, const char *name, uint32_t serial) {
    if (t->cap == 0) return -1;
    size_t i = pending_slot(serial, to_bus, t->cap);
    for (;;) {
        Pending *p = &t->slots[i];
        if (p->serial == 0) return -1;
        if (!p->dead && p->serial == serial && p->to_bus == to_bus && name_eq(p->name, name)) {
            p->dead = 1;
            free(p->name);
            p->name = NULL;
            t->live--;
            return p->ts;
        }
        i = (i + 1) & (t->cap - 1);
    }
}

static void pending_free(PendingTable *t) {
    for (size_t i = 0; i < t->cap; i++) free(t->slots[i].name);
    free(t->slots);
    t->slots = NULL;
    t->cap = t->used = t->live = 0;
}

static int pending_grow(PendingTable *t) {
    size_t cap = t->cap ? t->cap : 16;
    while (t->live * 4 >= cap) cap *= 2; /* rehash drops tombstones */
    if (cap < 16) cap = 16;
    Pending *slots = calloc(cap, sizeof(Pending));
    if (!slots) return -1;
    Pending *old = t->slots;
    size_t old_cap = t->cap;
    t->slots = slots;
    t->cap = cap;
    t->used = t->live = 0;
    for (size_t i = 0; i < old_cap; i++) {
        Pending *p = &old[i];
        if (p->serial && !p->dead) {
            size_t j = pending_slot(p->serial, p->to_bus, cap);
            while (slots[j].serial) j = (j + 1) & (cap - 1);
            slots[j] = *p; /* the name reference moves */
            t->used++;
            t->live++;
        }
    }
    free(old);
    return 0;
}

/* ------------------------------------------------------------------ connections */

typedef struct Seg {
    struct Seg *next;
    size_t off, len, cap;
    int nfds;
    int *fds;
    unsigned char *data;
} Seg;

struct Conn;

typedef struct Side {
    struct Conn *conn;
    int idx; /* 0 client, 1 bus */
    int fd;
    int unix_fds;
    int blocked;    /* a frame of ours waits for Python: read and process nothing more */
    int bp_paused;  /* the other side's output is backed up */
    int writing;    /* output queued: watch for writability */
    int registered; /* in the epoll set (a side that wants nothing is taken out: no HUP spin) */
    int paused_peer;
    unsigned char *in;
    size_t in_start, in_len, in_cap;
    int *fdq;
    size_t fdq_start, fdq_len, fdq_cap;
    Seg *out_head, *out_tail;
    size_t out_bytes;
} Side;

typedef struct Conn {
    struct Conn *next; /* id hash chain */
    long id;
    int closed;
    int refs;                /* queued records that name it */
    unsigned long closed_at; /* the forwarding thread's batch number when it closed */
    Side side[2];
    PyObject *client_ep;
    PendingTable pending;
} Conn;

#define CONN_BUCKETS 1024

typedef struct {
    uint64_t seq;
    int64_t ts;
    int64_t latency;
    Head *head;
    Conn *owner; /* kept (refs) until encoded: its client endpoint goes into the record */
    uint32_t serial, reply_serial, size;
    long conn;
    uint8_t to_bus;
    size_t off, len; /* arguments in the arena: raw array bytes (ay) or JSON (other) */
    unsigned char *block; /* instead, a large ay body in a block of its own (handed to Python as is) */
} Rec;

typedef struct {
    int kind; /* EV_FRAME, EV_CLOSED, EV_MALFORMED */
    long conn;
    int from_client;
    unsigned char *data;
    size_t len;
    int64_t ts;
    uint64_t seq; /* a frame's record number, taken when it arrived: records stay in arrival order */
    char *reason;
} Event;

#define EV_FRAME 0
#define EV_CLOSED 1
#define EV_MALFORMED 2
#define EV_STALLED 3 /* forwarding waited for the trace to be written (ts: how long) */

typedef struct {
    PyObject_HEAD
    int epfd;
    int wakefd; /* Python watches it: events queued, records to encode */
    int pokefd; /* wakes the forwarding thread (stop, freed connections) */
    pthread_mutex_t mu;
    pthread_cond_t drained;
    pthread_t thread;
    int thread_running;
    int stop;
    unsigned long batch; /* batches the thread has finished: stale epoll pointers die with them */
    Event *events;
    size_t nevents, capevents;
    unsigned char *spare_arena; /* the last encoded batch's buffers, kept for the next one: */
    size_t spare_cap;           /* fresh memory costs page faults at 64 KiB per message */
    Rec *spare_recs;
    size_t spare_caprecs;
    jbuf out; /* encode's output buffer, likewise kept */
    int encoding;
    uint64_t *reserved; /* numbers of frames handed to Python and not yet resumed: no record at or */
    size_t nreserved, capreserved; /* after the smallest may be written before that frame's */
    int woken;            /* wakefd written since Python last took events */
    int records_signalled;
    int big_signalled;
    int closed;
    int record;
    int decode_args;
    uint64_t seq;
    Head *heads[HEAD_BUCKETS];
    size_t nheads;
    Conn *conns[CONN_BUCKETS];
    Rec *recs;
    size_t nrecs, caprecs;
    unsigned char *arena;
    size_t arena_len, arena_cap;
    size_t block_bytes; /* bytes in the queued records' own blocks: they count like the arena's */
    Conn *dead; /* closed: freed by a call holding the GIL, once no record or stale event names them */
    unsigned long long n_compiled, n_handed; /* frames forwarded here alone / handed to Python */
} Plane;

static PyTypeObject PlaneType;

static Conn *conn_find(Plane *pl, long id) {
    for (Conn *c = pl->conns[(unsigned long)id % CONN_BUCKETS]; c; c = c->next)
        if (c->id == id) return c;
    return NULL;
}

static void close_fd_list(int *fds, size_t n) {
    for (size_t i = 0; i < n; i++) close(fds[i]);
}

static void seg_free(Seg *s) {
    if (s->fds) {
        close_fd_list(s->fds, (size_t)s->nfds);
        free(s->fds);
    }
    free(s->data);
    free(s);
}

static inline int side_reading(const Side *s) { return !s->blocked && !s->bp_paused; }

/* Watch what the side wants now; a side that wants nothing leaves the epoll set, or a
 * hung-up peer would wake the thread again and again. */
static int side_update(Plane *pl, Side *s) {
    if (s->fd < 0) return 0;
    struct epoll_event ev = {0};
    ev.events = (side_reading(s) ? EPOLLIN : 0) | (s->writing ? EPOLLOUT : 0);
    ev.data.ptr = s;
    if (!ev.events) {
        if (s->registered) epoll_ctl(pl->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        s->registered = 0;
        return 0;
    }
    int rc = epoll_ctl(pl->epfd, s->registered ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, s->fd, &ev);
    if (rc == 0) s->registered = 1;
    return rc;
}

static void wake_python(Plane *pl) {
    if (pl->woken || pl->wakefd < 0) return;
    pl->woken = 1;
    uint64_t one = 1;
    ssize_t n = write(pl->wakefd, &one, sizeof one);
    (void)n;
}

static void poke_thread(Plane *pl) {
    if (pl->pokefd < 0) return;
    uint64_t one = 1;
    ssize_t n = write(pl->pokefd, &one, sizeof one);
    (void)n;
}

/* Queue something for Python; 0 or -1 (out of memory). */
static int push_event(Plane *pl, int kind, long conn, int from_client, const unsigned char *data, size_t len,
                      int64_t ts, const char *reason) {
    if (pl->nevents == pl->capevents) {
        size_t cap = pl->capevents ? pl->capevents * 2 : 64;
        Event *e = realloc(pl->events, cap * sizeof(Event));
        if (!e) return -1;
        pl->events = e;
        pl->capevents = cap;
    }
    Event *e = &pl->events[pl->nevents];
    memset(e, 0, sizeof *e);
    e->kind = kind;
    e->conn = conn;
    e->from_client = from_client;
    e->ts = ts;
    if (len) {
        e->data = malloc(len);
        if (!e->data) return -1;
        memcpy(e->data, data, len);
        e->len = len;
    }
    if (reason) {
        e->reason = strdup(reason);
        if (!e->reason) {
            free(e->data);
            return -1;
        }
    }
    if (kind == EV_FRAME) {
        if (pl->nreserved == pl->capreserved) {
            size_t cap = pl->capreserved ? pl->capreserved * 2 : 64;
            uint64_t *r = realloc(pl->reserved, cap * sizeof(uint64_t));
            if (!r) {
                free(e->data);
                free(e->reason);
                return -1;
            }
            pl->reserved = r;
            pl->capreserved = cap;
        }
        e->seq = ++pl->seq;
        pl->reserved[pl->nreserved++] = e->seq;
    }
    pl->nevents++;
    wake_python(pl);
    return 0;
}

/* send as much of the output queue as the socket takes; -1 on a fatal error (errno set) */
static int side_flush(Side *s) {
    while (s->out_head) {
        Seg *g = s->out_head;
        ssize_t n;
        if (g->nfds && g->off == 0) {
            struct iovec iov = {g->data, g->len};
            char control[CMSG_SPACE(MAX_UNIX_FDS * sizeof(int))];
            struct msghdr msg = {0};
            msg.msg_iov = &iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control;
            msg.msg_controllen = CMSG_SPACE(g->nfds * sizeof(int));
            struct cmsghdr *cm = CMSG_FIRSTHDR(&msg);
            cm->cmsg_level = SOL_SOCKET;
            cm->cmsg_type = SCM_RIGHTS;
            cm->cmsg_len = CMSG_LEN(g->nfds * sizeof(int));
            memcpy(CMSG_DATA(cm), g->fds, g->nfds * sizeof(int));
            n = sendmsg(s->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (n > 0) {
                close_fd_list(g->fds, (size_t)g->nfds);
                free(g->fds);
                g->fds = NULL;
                g->nfds = 0;
            }
        } else {
            n = send(s->fd, g->data + g->off, g->len - g->off, MSG_NOSIGNAL | MSG_DONTWAIT);
        }
        if (n < 0) {
            if (errno == EAGAIN || errno == EINTR) return 0;
            return -1;
        }
        g->off += (size_t)n;
        s->out_bytes -= (size_t)n;
        if (g->off < g->len) return 0;
        s->out_head = g->next;
        if (!s->out_head) s->out_tail = NULL;
        seg_free(g);
    }
    return 0;
}

static int side_enqueue(Side *s, const unsigned char *data, size_t len, int *fds, int nfds) {
    Seg *t = s->out_tail;
    if (!nfds && t && !t->nfds && t->cap - t->len >= len) {
        memcpy(t->data + t->len, data, len);
        t->len += len;
        s->out_bytes += len;
        return 0;
    }
    Seg *g = calloc(1, sizeof(Seg));
    if (!g) return -1;
    g->cap = len < 65536 && !nfds ? 65536 : len;
    g->data = malloc(g->cap ? g->cap : 1);
    if (!g->data) {
        free(g);
        return -1;
    }
    memcpy(g->data, data, len);
    g->len = len;
    if (nfds) {
        g->fds = malloc(sizeof(int) * (size_t)nfds);
        if (!g->fds) {
            free(g->data);
            free(g);
            return -1;
        }
        memcpy(g->fds, fds, sizeof(int) * (size_t)nfds);
        g->nfds = nfds;
    }
    if (t)
        t->next = g;
    else
        s->out_head = g;
    s->out_tail = g;
    s->out_bytes += len;
    return 0;
}

static void conn_close(Plane *pl, Conn *c, const char *reason, int notify);

/* Close a connection whose read or write just failed, naming the failure (errno). */
static void conn_fail(Plane *pl, Conn *c, const char *what) {
    char reason[160];
    snprintf(reason, sizeof reason, "%s failed: %s", what, strerror(errno));
    conn_close(pl, c, reason, 1);
}

/* write bytes (and fds, whose ownership passes to the plane) to a side, in order */
static int side_write(Plane *pl, Side *s, const unsigned char *data, size_t len, int *fds, int nfds) {
    Conn *c = s->conn;
    if (c->closed || s->fd < 0) {
        close_fd_list(fds, (size_t)nfds);
        return 0;
    }
    if (!s->out_head && !nfds) {
        ssize_t n = send(s->fd, data, len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno != EAGAIN && errno != EINTR) {
                conn_fail(pl, c, "write");
                return -1;
            }
            n = 0;
        }
        if ((size_t)n == len) return 0;
        data += n;
        len -= (size_t)n;
    }
    if (side_enqueue(s, data, len, fds, nfds) < 0) {
        close_fd_list(fds, (size_t)nfds);
        conn_close(pl, c, "out of memory", 1);
        return -1;
    }
    if (s->out_head == s->out_tail && s->out_head->off == 0 && !s->writing) {
        /* first queued data: try once now (fds ride on the first byte of their frame) */
        if (side_flush(s) < 0) {
            conn_fail(pl, c, "write");
            return -1;
        }
    }
    if (s->out_head && !s->writing) {
        s->writing = 1;
        side_update(pl, s);
    }
    Side *src = &c->side[1 - s->idx];
    if (s->out_bytes > HIGH_WATER && !src->bp_paused) {
        src->bp_paused = 1;
        s->paused_peer = 1;
        side_update(pl, src);
    }
    return 0;
}

static void side_drop(Side *s) {
    while (s->out_head) {
        Seg *g = s->out_head;
        s->out_head = g->next;
        seg_free(g);
    }
    s->out_tail = NULL;
    s->out_bytes = 0;
    if (s->fdq) {
        close_fd_list(s->fdq + s->fdq_start, s->fdq_len - s->fdq_start);
        free(s->fdq);
        s->fdq = NULL;
    }
    free(s->in);
    s->in = NULL;
}

static void conn_free(Conn *c) { /* with the GIL */
    side_drop(&c->side[0]);
    side_drop(&c->side[1]);
    pending_free(&c->pending);
    Py_XDECREF(c->client_ep);
    free(c);
}

static void conn_unlink(Plane *pl, Conn *c) {
    Conn **pp = &pl->conns[(unsigned long)c->id % CONN_BUCKETS];
    while (*pp && *pp != c) pp = &(*pp)->next;
    if (*pp) *pp = c->next;
}

/* Close both sockets (best effort: queued output first), and tell Python unless it asked. */
static void conn_close(Plane *pl, Conn *c, const char *reason, int notify) {
    if (c->closed) return;
    c->closed = 1;
    c->closed_at = pl->batch;
    for (int i = 0; i < 2; i++) {
        Side *s = &c->side[i];
        if (s->fd < 0) continue;
        if (s->registered) epoll_ctl(pl->epfd, EPOLL_CTL_DEL, s->fd, NULL);
        s->registered = 0;
        if (s->out_head) side_flush(s); /* let a pending error reply reach its peer */
        close(s->fd);
        s->fd = -1;
    }
    conn_unlink(pl, c);
    c->next = pl->dead;
    pl->dead = c;
    if (notify) push_event(pl, EV_CLOSED, c->id, 0, NULL, 0, 0, reason);
}

/* Free closed connections no record and no event the thread may still hold names (with the GIL). */
static void reap_dead(Plane *pl, int all) {
    Conn **pp = &pl->dead;
    while (*pp) {
        Conn *c = *pp;
        if (all || (c->refs == 0 && c->closed_at < pl->batch)) {
            *pp = c->next;
            conn_free(c);
        } else {
            pp = &c->next;
        }
    }
}

/* ------------------------------------------------------------------ records */

static void take_spares(Plane *pl) {
    if (!pl->arena && pl->spare_arena) {
        pl->arena = pl->spare_arena;
        pl->arena_cap = pl->spare_cap;
        pl->spare_arena = NULL;
    }
    if (!pl->recs && pl->spare_recs) {
        pl->recs = pl->spare_recs;
        pl->caprecs = pl->spare_caprecs;
        pl->spare_recs = NULL;
    }
}

/* Argument bytes queued for records and not yet encoded. */
static inline size_t unwritten(const Plane *pl) { return pl->arena_len + pl->block_bytes; }

static int arena_reserve(Plane *pl, size_t extra) {
    take_spares(pl);
    if (pl->arena_cap - pl->arena_len >= extra) return 0;
    size_t cap = pl->arena_cap ? pl->arena_cap : 1 << 20;
    while (cap - pl->arena_len < extra) cap *= 2;
    unsigned char *p = realloc(pl->arena, cap);
    if (!p) return -1;
    pl->arena = p;
    pl->arena_cap = cap;
    return 0;
}

static Rec *rec_new(Plane *pl) {
    take_spares(pl);
    if (pl->nrecs == pl->caprecs) {
        size_t cap = pl->caprecs ? pl->caprecs * 2 : 1024;
        Rec *r = realloc(pl->recs, cap * sizeof(Rec));
        if (!r) return NULL;
        pl->recs = r;
        pl->caprecs = cap;
    }
    return &pl->recs[pl->nrecs++];
}

static inline uint32_t rd32(const unsigned char *p, int little) {
    uint32_t v;
    memcpy(&v, p, 4);
    return little ? v : __builtin_bswap32(v);
}

/* The cached header of a frame, or NULL (the frame then takes the Python path). */
static Head *lookup(Plane *pl, const unsigned char *f, size_t total, size_t end, uint32_t *reply_serial) {
    static const unsigned char rs[4] = {5, 1, 'u', 0};
    const unsigned char *at = memmem(f + FIXED_HEADER, end - FIXED_HEADER, rs, 4);
    uint64_t h;
    long value_at = -1;
    if (at) {
        value_at = (long)(at - f) + 4;
        if ((size_t)value_at + 4 > end) return NULL;
        h = head_hash(f, f + FIXED_HEADER, (size_t)value_at - FIXED_HEADER, f + value_at + 4,
                      end - (size_t)value_at - 4);
    } else {
        h = head_hash(f, f + FIXED_HEADER, end - FIXED_HEADER, NULL, 0);
    }
    Head *hd = pl->heads[h % HEAD_BUCKETS];
    size_t key_len = end - 12 - (at ? 4 : 0);
    for (; hd; hd = hd->next) {
        if (hd->hash != h || hd->key_len != key_len || hd->reply_at != value_at) continue;
        if (memcmp(hd->key, f, 4) != 0) continue;
        if (at) {
            size_t a = (size_t)value_at - FIXED_HEADER;
            if (memcmp(hd->key + 4, f + FIXED_HEADER, a) != 0) continue;
            if (memcmp(hd->key + 4 + a, f + value_at + 4, end - (size_t)value_at - 4) != 0) continue;
        } else if (memcmp(hd->key + 4, f + FIXED_HEADER, end - FIXED_HEADER) != 0) {
            continue;
        }
        break;
    }
    if (!hd) return NULL;
    int little = f[0] == 'l';
    if (at) {
        *reply_serial = rd32(f + value_at, little);
        if (!*reply_serial) return NULL;
    } else {
        *reply_serial = 0;
    }
    size_t body_len = total - (size_t)hd->body_at;
    if (hd->kind == KIND_NONE) {
        if (body_len) return NULL;
    } else if (hd->kind == KIND_BYTES) {
        if (body_len < 4) return NULL;
        uint32_t n = rd32(f + hd->body_at, little);
        if ((size_t)n + 4 != body_len || n > MAX_ARRAY_LENGTH) return NULL;
    } else if (!body_len) {
        return NULL;
    }
    return hd;
}

/* Queue the record of a forwarded frame; 1 if it cannot be taken here (Python must). */
static int record_frame(Plane *pl, Conn *c, int to_bus, Head *hd, const unsigned char *f, size_t total,
                        uint32_t serial, uint32_t reply_serial, int64_t now) {
    int64_t latency = -1;
    int little = f[0] == 'l';
    /* the JSON of other bodies is made now: it is also the check the strict path would do */
    take_spares(pl);
    size_t off = pl->arena_len, len = 0;
    if (hd->kind == KIND_OTHER) {
        jbuf jb = {(char *)pl->arena, pl->arena_len, pl->arena_cap};
        int rc = args_to_json(&jb, f + hd->body_at, total - (size_t)hd->body_at, hd->sig, hd->sig_len, little);
        pl->arena = (unsigned char *)jb.p;
        pl->arena_cap = jb.cap;
        if (rc != 0) return 1;
        len = jb.len - off;
        if (!pl->record || !pl->decode_args) len = 0;
        pl->arena_len = off + len;
    }
    if (hd->mtype == 1) {
        if (!hd->no_reply && pending_put(&c->pending, to_bus, to_bus ? NULL : hd->sender_c, serial, now) < 0) return 1;
    } else if (hd->mtype != 4) {
        int64_t t = to_bus ? pending_take(&c->pending, 0, hd->dest_c, reply_serial)
                           : pending_take(&c->pending, 1, NULL, reply_serial);
        if (t >= 0) latency = now - t;
    }
    if (!pl->record) return 0;
    unsigned char *block = NULL;
    if (hd->kind == KIND_BYTES && pl->decode_args) {
        len = total - (size_t)hd->body_at - 4;
        if (len >= BIG_BODY) { /* copied once here, then written from this block: no copy into a bytes object */
            block = malloc(len);
            if (!block) return 1;
            memcpy(block, f + hd->body_at + 4, len);
        } else {
            if (arena_reserve(pl, len) < 0) return 1;
            memcpy(pl->arena + pl->arena_len, f + hd->body_at + 4, len);
            pl->arena_len += len;
        }
    }
    Rec *r = rec_new(pl);
    if (!r) {
        free(block);
        return 1;
    }
    r->block = block;
    if (block) pl->block_bytes += len;
    r->seq = ++pl->seq;
    r->ts = now;
    r->latency = latency;
    r->head = hd;
    hd->refs++;
    r->owner = c;
    c->refs++;
    r->serial = serial;
    r->reply_serial = reply_serial;
    r->size = (uint32_t)total;
    r->conn = c->id;
    r->to_bus = (uint8_t)to_bus;
    r->off = off;
    r->len = len;
    if (!pl->records_signalled || (unwritten(pl) >= ARENA_SIGNAL && !pl->big_signalled)) {
        pl->records_signalled = 1;
        if (unwritten(pl) >= ARENA_SIGNAL) pl->big_signalled = 1;
        pl->woken = 0; /* a new reason to wake Python */
        wake_python(pl);
    }
    return 0;
}

/* Python names the reason (from the fixed header) and records it; the sockets close now. */
static void malformed(Plane *pl, Conn *c, int idx, const unsigned char *f) {
    if (push_event(pl, EV_MALFORMED, c->id, idx == 0, f, FIXED_HEADER, 0, NULL) < 0) {
        conn_close(pl, c, "out of memory", 1);
        return;
    }
    conn_close(pl, c, "malformed message", 0);
}

/* Hand a frame to Python and stop this side until Python resumes it. */
static void slow_frame(Plane *pl, Conn *c, Side *s, const unsigned char *f, size_t total, int64_t now) {
    if (push_event(pl, EV_FRAME, c->id, s->idx == 0, f, total, now, NULL) < 0) {
        conn_close(pl, c, "out of memory", 1);
        return;
    }
    s->blocked = 1;
    side_update(pl, s);
}

static int64_t monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000000000LL + t.tv_nsec;
}

/* Forward the complete frames in a side's receive buffer; returns frames handled. */
static long process(Plane *pl, Side *s, int64_t now) {
    Conn *c = s->conn;
    Side *dst = &c->side[1 - s->idx];
    int to_bus = s->idx == 0;
    size_t pos = s->in_start, run = pos;
    long frames = 0;
    while (!c->closed && !s->blocked && s->in_len - pos >= FIXED_HEADER) {
        const unsigned char *f = s->in + pos;
        int little = f[0] == 'l';
        if ((f[0] != 'l' && f[0] != 'B') || f[1] < 1 || f[1] > 4 || f[3] != 1) {
            if (run < pos && side_write(pl, dst, s->in + run, pos - run, NULL, 0) < 0) return frames;
            malformed(pl, c, s->idx, f);
            return frames;
        }
        uint32_t body_len = rd32(f + 4, little), serial = rd32(f + 8, little), fields_len = rd32(f + 12, little);
        uint64_t end = FIXED_HEADER + (uint64_t)fields_len;
        uint64_t total = end + ((8 - (fields_len & 7)) & 7) + body_len;
        if (fields_len > MAX_HEADER_FIELDS || total > MAX_MESSAGE_SIZE) {
            if (run < pos && side_write(pl, dst, s->in + run, pos - run, NULL, 0) < 0) return frames;
            malformed(pl, c, s->idx, f);
            return frames;
        }
        if (s->in_len - pos < total) {
            if (s->in_cap - s->in_start < total) {
                /* make room for the whole frame: move what we have to the front and grow */
                if (run < pos && side_write(pl, dst, s->in + run, pos - run, NULL, 0) < 0) return frames;
                memmove(s->in, s->in + pos, s->in_len - pos);
                s->in_len -= pos;
                pos = run = s->in_start = 0;
                if (s->in_cap < total) {
                    unsigned char *p = realloc(s->in, total);
                    if (!p) {
                        conn_close(pl, c, "out of memory", 1);
                        return frames;
                    }
                    s->in = p;
                    s->in_cap = total;
                }
            }
            break;
        }
        frames++;
        uint32_t reply_serial = 0;
        Head *hd = serial && s->fdq_len == s->fdq_start ? lookup(pl, f, total, end, &reply_serial) : NULL;
        if (hd && record_frame(pl, c, to_bus, hd, f, total, serial, reply_serial, now) == 0) {
            pl->n_compiled++;
            pos += total;
            continue;
        }
        if (run < pos && side_write(pl, dst, s->in + run, pos - run, NULL, 0) < 0) return frames;
        pl->n_handed++;
        slow_frame(pl, c, s, s->in + pos, total, now);
        pos += total;
        s->in_start = pos;
        if (s->in_start == s->in_len) s->in_start = s->in_len = 0;
        return frames; /* the rest waits for resume() */
    }
    if (c->closed) return frames;
    if (run < pos && side_write(pl, dst, s->in + run, pos - run, NULL, 0) < 0) return frames;
    s->in_start = pos;
    if (s->in_start == s->in_len) s->in_start = s->in_len = 0;
    return frames;
}

static long side_readable(Plane *pl, Side *s) {
    Conn *c = s->conn;
    if (s->in_cap - s->in_len < READ_CHUNK / 4) {
        if (s->in_start) {
            memmove(s->in, s->in + s->in_start, s->in_len - s->in_start);
            s->in_len -= s->in_start;
            s->in_start = 0;
        }
        if (s->in_cap - s->in_len < READ_CHUNK / 4) {
            size_t cap = s->in_cap ? s->in_cap * 2 : READ_CHUNK;
            unsigned char *p = realloc(s->in, cap);
            if (!p) {
                conn_close(pl, c, "out of memory", 1);
                return 0;
            }
            s->in = p;
            s->in_cap = cap;
        }
    }
    ssize_t n;
    if (s->unix_fds) {
        char control[CMSG_SPACE(MAX_UNIX_FDS * sizeof(int))];
        struct iovec iov = {s->in + s->in_len, s->in_cap - s->in_len};
        struct msghdr msg = {0};
        msg.msg_iov = &iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control;
        msg.msg_controllen = sizeof control;
        n = recvmsg(s->fd, &msg, MSG_CMSG_CLOEXEC | MSG_DONTWAIT);
        if (n >= 0) {
            for (struct cmsghdr *cm = CMSG_FIRSTHDR(&msg); cm; cm = CMSG_NXTHDR(&msg, cm)) {
                if (cm->cmsg_level != SOL_SOCKET || cm->cmsg_type != SCM_RIGHTS) continue;
                size_t k = (cm->cmsg_len - CMSG_LEN(0)) / sizeof(int);
                if (s->fdq_len + k > s->fdq_cap) {
                    size_t cap = (s->fdq_len + k) * 2;
                    int *q = realloc(s->fdq, cap * sizeof(int));
                    if (!q) {
                        close_fd_list((int *)CMSG_DATA(cm), k);
                        continue;
                    }
                    s->fdq = q;
                    s->fdq_cap = cap;
                }
                memcpy(s->fdq + s->fdq_len, CMSG_DATA(cm), k * sizeof(int));
                s->fdq_len += k;
            }
            if (msg.msg_flags & MSG_CTRUNC) {
                conn_close(pl, c, "too many file descriptors in one message (control data truncated)", 1);
                return 0;
            }
        }
    } else {
        n = recv(s->fd, s->in + s->in_len, s->in_cap - s->in_len, MSG_DONTWAIT);
    }
    if (n < 0) {
        if (errno == EAGAIN || errno == EINTR) return 0;
        conn_fail(pl, c, "read");
        return 0;
    }
    if (n == 0) {
        conn_close(pl, c, "closed by peer", 1);
        return 0;
    }
    s->in_len += (size_t)n;
    return process(pl, s, monotonic_ns());
}

static void side_writable(Plane *pl, Side *s) {
    Conn *c = s->conn;
    if (side_flush(s) < 0) {
        conn_fail(pl, c, "write");
        return;
    }
    if (!s->out_head && s->writing) {
        s->writing = 0;
        side_update(pl, s);
    }
    if (s->paused_peer && s->out_bytes < LOW_WATER) {
        s->paused_peer = 0;
        Side *src = &c->side[1 - s->idx];
        if (src->bp_paused) {
            src->bp_paused = 0;
            side_update(pl, src);
        }
    }
}

/* ------------------------------------------------------------------ the forwarding thread */

static void *forward_loop(void *arg) {
    Plane *pl = arg;
    struct epoll_event evs[128];
    for (;;) {
        int n = epoll_wait(pl->epfd, evs, 128, -1);
        if (n < 0 && errno != EINTR) break;
        pthread_mutex_lock(&pl->mu);
        if (!pl->stop && unwritten(pl) > ARENA_LIMIT) {
            int64_t since = monotonic_ns();
            while (!pl->stop && unwritten(pl) > ARENA_LIMIT) pthread_cond_wait(&pl->drained, &pl->mu);
            push_event(pl, EV_STALLED, 0, 0, NULL, 0, monotonic_ns() - since, NULL);
        }
        if (pl->stop) {
            pthread_mutex_unlock(&pl->mu);
            break;
        }
        for (int i = 0; i < n; i++) {
            Side *s = evs[i].data.ptr;
            if (!s) { /* poked */
                uint64_t v;
                ssize_t r = read(pl->pokefd, &v, sizeof v);
                (void)r;
                continue;
            }
            Conn *c = s->conn;
            if (c->closed) continue; /* closed since epoll_wait returned: its memory waits for this batch */
            uint32_t e = evs[i].events;
            if (e & (EPOLLOUT | EPOLLERR)) side_writable(pl, s);
            if (c->closed) continue;
            if ((e & (EPOLLIN | EPOLLHUP | EPOLLERR)) && side_reading(s)) side_readable(pl, s);
        }
        pl->batch++;
        pthread_mutex_unlock(&pl->mu);
    }
    return NULL;
}

/* ------------------------------------------------------------------ Python methods */

static int take_buffer(Side *s, PyObject *data) {
    Py_buffer view;
    if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) return -1;
    size_t cap = (size_t)view.len > READ_CHUNK ? (size_t)view.len : READ_CHUNK;
    s->in = malloc(cap);
    if (!s->in) {
        PyBuffer_Release(&view);
        PyErr_NoMemory();
        return -1;
    }
    memcpy(s->in, view.buf, (size_t)view.len);
    s->in_cap = cap;
    s->in_len = (size_t)view.len;
    s->in_start = 0;
    PyBuffer_Release(&view);
    return 0;
}

static PyObject *plane_adopt(Plane *pl, PyObject *args) {
    long id;
    int cfd, bfd, cfds, bfds;
    PyObject *client_ep, *cbuf, *bbuf;
    Py_buffer cout, bout;
    if (!PyArg_ParseTuple(args, "liippOOOy*y*", &id, &cfd, &bfd, &cfds, &bfds, &client_ep, &cbuf, &bbuf, &cout, &bout))
        return NULL;
    PyObject *result = NULL;
    Conn *c = pl->epfd < 0 ? NULL : calloc(1, sizeof(Conn));
    if (!c) {
        if (pl->epfd < 0)
            PyErr_SetString(PyExc_RuntimeError, "the plane is closed");
        else
            PyErr_NoMemory();
        close(cfd);
        close(bfd);
        goto done;
    }
    c->id = id;
    c->client_ep = Py_NewRef(client_ep);
    int fds[2] = {cfd, bfd}, ufds[2] = {cfds, bfds};
    PyObject *bufs[2] = {cbuf, bbuf};
    for (int i = 0; i < 2; i++) {
        Side *s = &c->side[i];
        s->conn = c;
        s->idx = i;
        s->fd = fds[i];
        s->unix_fds = ufds[i];
    }
    for (int i = 0; i < 2; i++) {
        if (take_buffer(&c->side[i], bufs[i]) < 0) {
            close(cfd);
            close(bfd);
            c->side[0].fd = c->side[1].fd = -1;
            conn_free(c);
            goto done;
        }
    }
    pthread_mutex_lock(&pl->mu);
    c->next = pl->conns[(unsigned long)id % CONN_BUCKETS];
    pl->conns[(unsigned long)id % CONN_BUCKETS] = c;
    /* what authentication left unsent goes first, then the frames that came with its end */
    Py_buffer *unsent[2] = {&cout, &bout};
    for (int i = 0; i < 2 && !c->closed; i++)
        if (unsent[i]->len) side_write(pl, &c->side[i], unsent[i]->buf, (size_t)unsent[i]->len, NULL, 0);
    int64_t now = monotonic_ns();
    for (int i = 0; i < 2 && !c->closed; i++)
        if (c->side[i].in_len) process(pl, &c->side[i], now);
    for (int i = 0; i < 2 && !c->closed; i++) {
        if (side_update(pl, &c->side[i]) < 0) {
            char reason[160];
            snprintf(reason, sizeof reason, "cannot watch the connection: %s", strerror(errno));
            conn_close(pl, c, reason, 1);
        }
    }
    pthread_mutex_unlock(&pl->mu);
    result = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&cout);
    PyBuffer_Release(&bout);
    return result;
}

static PyObject *plane_send(Plane *pl, PyObject *args) {
    long id;
    int to_bus;
    Py_buffer data;
    PyObject *fdlist = Py_None;
    if (!PyArg_ParseTuple(args, "lpy*|O", &id, &to_bus, &data, &fdlist)) return NULL;
    int fds[MAX_UNIX_FDS];
    int nfds = 0;
    if (fdlist != Py_None) {
        Py_ssize_t n = PySequence_Length(fdlist);
        if (n < 0 || n > MAX_UNIX_FDS) {
            PyBuffer_Release(&data);
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "too many fds");
            return NULL;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            PyObject *o = PySequence_GetItem(fdlist, i);
            if (!o) {
                PyBuffer_Release(&data);
                return NULL;
            }
            fds[nfds++] = (int)PyLong_AsLong(o);
            Py_DECREF(o);
        }
    }
    pthread_mutex_lock(&pl->mu);
    Conn *c = conn_find(pl, id);
    int rc = -1;
    if (!c || c->closed)
        close_fd_list(fds, (size_t)nfds);
    else
        rc = side_write(pl, &c->side[to_bus ? 1 : 0], data.buf, (size_t)data.len, fds, nfds);
    pthread_mutex_unlock(&pl->mu);
    PyBuffer_Release(&data);
    return PyBool_FromLong(rc == 0);
}

static PyObject *plane_resume(Plane *pl, PyObject *args) {
    long id;
    int from_client;
    unsigned long long seq;
    if (!PyArg_ParseTuple(args, "lpK", &id, &from_client, &seq)) return NULL;
    pthread_mutex_lock(&pl->mu);
    for (size_t i = 0; i < pl->nreserved; i++)
        if (pl->reserved[i] == seq) {
            pl->reserved[i] = pl->reserved[--pl->nreserved];
            break;
        }
    Conn *c = conn_find(pl, id);
    if (c && !c->closed) {
        Side *s = &c->side[from_client ? 0 : 1];
        s->blocked = 0;
        if (s->in_len) process(pl, s, monotonic_ns());
        if (!c->closed) side_update(pl, s);
    }
    pthread_mutex_unlock(&pl->mu);
    Py_RETURN_NONE;
}

static PyObject *plane_take_fds(Plane *pl, PyObject *args) {
    long id;
    int from_client;
    Py_ssize_t n;
    if (!PyArg_ParseTuple(args, "lpn", &id, &from_client, &n)) return NULL;
    int got[MAX_UNIX_FDS];
    Py_ssize_t k = 0;
    pthread_mutex_lock(&pl->mu);
    Conn *c = conn_find(pl, id);
    if (c) {
        Side *s = &c->side[from_client ? 0 : 1];
        while (k < n && k < MAX_UNIX_FDS && s->fdq_start < s->fdq_len) got[k++] = s->fdq[s->fdq_start++];
        if (s->fdq_start == s->fdq_len) s->fdq_start = s->fdq_len = 0;
    }
    pthread_mutex_unlock(&pl->mu);
    PyObject *out = PyList_New(k);
    if (!out) {
        close_fd_list(got, (size_t)k);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < k; i++) PyList_SET_ITEM(out, i, PyLong_FromLong(got[i]));
    return out;
}

static PyObject *plane_close(Plane *pl, PyObject *args) {
    long id;
    if (!PyArg_ParseTuple(args, "l", &id)) return NULL;
    pthread_mutex_lock(&pl->mu);
    Conn *c = conn_find(pl, id);
    if (c) conn_close(pl, c, "", 0);
    reap_dead(pl, 0);
    pthread_mutex_unlock(&pl->mu);
    if (c) poke_thread(pl); /* finish its batch, so the connection's memory can go */
    Py_RETURN_NONE;
}

static PyObject *plane_take_events(Plane *pl, PyObject *Py_UNUSED(ignored)) {
    uint64_t v;
    if (pl->wakefd >= 0) {
        ssize_t r = read(pl->wakefd, &v, sizeof v); /* before taking: a later event wakes us again */
        (void)r;
    }
    pthread_mutex_lock(&pl->mu);
    pl->woken = 0;
    Event *events = pl->events;
    size_t n = pl->nevents;
    pl->events = NULL;
    pl->nevents = pl->capevents = 0;
    reap_dead(pl, 0);
    pthread_mutex_unlock(&pl->mu);
    PyObject *out = PyList_New(0);
    for (size_t i = 0; i < n; i++) {
        Event *e = &events[i];
        PyObject *item = NULL;
        if (out) {
            if (e->kind == EV_FRAME)
                item = Py_BuildValue("(sliy#LK)", "frame", e->conn, e->from_client, (const char *)e->data,
                                     (Py_ssize_t)e->len, (long long)e->ts, (unsigned long long)e->seq);
            else if (e->kind == EV_CLOSED)
                item = Py_BuildValue("(sls)", "closed", e->conn, e->reason ? e->reason : "");
            else if (e->kind == EV_STALLED)
                item = Py_BuildValue("(slL)", "stalled", 0L, (long long)e->ts);
            else
                item = Py_BuildValue("(sliy#)", "malformed", e->conn, e->from_client, (const char *)e->data,
                                     (Py_ssize_t)e->len);
            if (!item || PyList_Append(out, item) < 0) Py_CLEAR(out);
            Py_XDECREF(item);
        }
        free(e->data);
        free(e->reason);
    }
    free(events);
    return out;
}

static PyObject *plane_note_call(Plane *pl, PyObject *args) {
    long id;
    int to_bus;
    PyObject *name;
    unsigned long serial;
    long long ts;
    if (!PyArg_ParseTuple(args, "lpOkL", &id, &to_bus, &name, &serial, &ts)) return NULL;
    const char *cname = name == Py_None ? NULL : PyUnicode_AsUTF8(name);
    if (name != Py_None && !cname) return NULL;
    int rc = 0;
    pthread_mutex_lock(&pl->mu);
    Conn *c = conn_find(pl, id);
    if (c && serial) rc = pending_put(&c->pending, to_bus, cname, (uint32_t)serial, ts);
    pthread_mutex_unlock(&pl->mu);
    if (rc < 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

static PyObject *plane_take_call(Plane *pl, PyObject *args) {
    long id;
    int to_bus;
    PyObject *name;
    unsigned long serial;
    if (!PyArg_ParseTuple(args, "lpOk", &id, &to_bus, &name, &serial)) return NULL;
    const char *cname = name == Py_None ? NULL : PyUnicode_AsUTF8(name);
    if (name != Py_None && !cname) return NULL;
    int64_t ts = -1;
    pthread_mutex_lock(&pl->mu);
    Conn *c = conn_find(pl, id);
    if (c) ts = pending_take(&c->pending, to_bus, cname, (uint32_t)serial);
    pthread_mutex_unlock(&pl->mu);
    if (ts < 0) Py_RETURN_NONE;
    return PyLong_FromLongLong(ts);
}

static PyObject *plane_next_seq(Plane *pl, PyObject *Py_UNUSED(ignored)) {
    pthread_mutex_lock(&pl->mu);
    uint64_t seq = ++pl->seq;
    pthread_mutex_unlock(&pl->mu);
    return PyLong_FromUnsignedLongLong(seq);
}

static PyObject *plane_learn(Plane *pl, PyObject *args) {
    Py_buffer key, sig;
    long reply_at, body_at;
    int kind, mtype, no_reply;
    PyObject *sender, *destination, *facts;
    if (!PyArg_ParseTuple(args, "y*llpiiOOy*O", &key, &reply_at, &body_at, &no_reply, &kind, &mtype, &sender,
                          &destination, &sig, &facts))
        return NULL;
    PyObject *result = NULL;
    const char *sender_c = sender == Py_None ? NULL : PyUnicode_AsUTF8(sender);
    const char *dest_c = destination == Py_None ? NULL : PyUnicode_AsUTF8(destination);
    if ((sender != Py_None && !sender_c) || (destination != Py_None && !dest_c)) {
        PyBuffer_Release(&key);
        PyBuffer_Release(&sig);
        return NULL;
    }
    pthread_mutex_lock(&pl->mu);
    if (key.len < 4) {
        PyErr_SetString(PyExc_ValueError, "key too short");
        goto done;
    }
    const unsigned char *k = key.buf;
    size_t rest = (size_t)key.len - 4;
    size_t a = reply_at >= 0 ? (size_t)reply_at - FIXED_HEADER : rest; /* the run before the cut */
    if (a > rest) {
        PyErr_SetString(PyExc_ValueError, "reply_at outside the key");
        goto done;
    }
    uint64_t h = head_hash(k, k + 4, a, k + 4 + a, rest - a);
    for (Head *o = pl->heads[h % HEAD_BUCKETS]; o; o = o->next)
        if (o->hash == h && o->key_len == (size_t)key.len && o->reply_at == reply_at &&
            memcmp(o->key, k, (size_t)key.len) == 0) {
            result = Py_NewRef(Py_False);
            goto done;
        }
    if (pl->nheads >= HEAD_LIMIT) heads_forget_all(pl->heads, &pl->nheads);
    Head *hd = calloc(1, sizeof(Head));
    if (!hd) {
        PyErr_NoMemory();
        goto done;
    }
    hd->key = malloc((size_t)key.len);
    hd->sig = malloc((size_t)sig.len + 1);
    hd->sender_c = sender_c ? strdup(sender_c) : NULL;
    hd->dest_c = dest_c ? strdup(dest_c) : NULL;
    if (!hd->key || !hd->sig || (sender_c && !hd->sender_c) || (dest_c && !hd->dest_c)) {
        free(hd->key);
        free(hd->sig);
        free(hd->sender_c);
        free(hd->dest_c);
        free(hd);
        PyErr_NoMemory();
        goto done;
    }
    memcpy(hd->key, k, (size_t)key.len);
    hd->key_len = (size_t)key.len;
    memcpy(hd->sig, sig.buf, (size_t)sig.len);
    hd->sig[sig.len] = 0;
    hd->sig_len = (size_t)sig.len;
    hd->hash = h;
    hd->refs = 1;
    hd->reply_at = reply_at;
    hd->body_at = body_at;
    hd->kind = kind;
    hd->mtype = mtype;
    hd->no_reply = no_reply;
    hd->sender = Py_NewRef(sender);
    hd->destination = Py_NewRef(destination);
    hd->facts = Py_NewRef(facts);
    hd->next = pl->heads[h % HEAD_BUCKETS];
    pl->heads[h % HEAD_BUCKETS] = hd;
    pl->nheads++;
    result = Py_NewRef(Py_True);
done:
    pthread_mutex_unlock(&pl->mu);
    PyBuffer_Release(&key);
    PyBuffer_Release(&sig);
    return result;
}

/* -- encoding */

/* A large body's block, handed to the trace writer as a buffer (writev takes it as is) and freed with it. */
typedef struct {
    PyObject_HEAD
    unsigned char *data;
    size_t len;
} Block;

static void block_dealloc(Block *b) {
    free(b->data);
    Py_TYPE(b)->tp_free((PyObject *)b);
}

static int block_getbuffer(Block *b, Py_buffer *view, int flags) {
    return PyBuffer_FillInfo(view, (PyObject *)b, b->data, (Py_ssize_t)b->len, 1, flags);
}

static Py_ssize_t block_length(Block *b) { return (Py_ssize_t)b->len; }

static PyBufferProcs block_as_buffer = {(getbufferproc)block_getbuffer, NULL};
static PySequenceMethods block_as_sequence = {.sq_length = (lenfunc)block_length};

static PyTypeObject BlockType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcproxy.dbus._plane.Block",
    .tp_basicsize = sizeof(Block),
    .tp_dealloc = (destructor)block_dealloc,
    .tp_as_buffer = &block_as_buffer,
    .tp_as_sequence = &block_as_sequence,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "the raw bytes of a large argument, owned until written",
};

/* A Block owning ``data`` (NULL on failure: the caller still owns it). */
static PyObject *block_wrap(unsigned char *data, size_t len) {
    Block *b = PyObject_New(Block, &BlockType);
    if (!b) return NULL;
    b->data = data;
    b->len = len;
    return (PyObject *)b;
}

static inline int put(jbuf *b, const void *p, size_t n) {
    if (b->cap - b->len < n && jbuf_reserve(b, n) < 0) return -1;
    memcpy(b->p + b->len, p, n);
    b->len += n;
    return 0;
}

static inline int put_bytes(jbuf *b, PyObject *o) {
    return put(b, PyBytes_AS_STRING(o), (size_t)PyBytes_GET_SIZE(o));
}

static inline char *fmt_u64(char *end, uint64_t v) {
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    return end;
}

static inline int put_u64(jbuf *b, uint64_t v) {
    char tmp[24];
    char *s = fmt_u64(tmp + sizeof tmp, v);
    return put(b, s, (size_t)(tmp + sizeof tmp - s));
}

static inline int put_i64(jbuf *b, int64_t v) {
    if (v < 0) {
        if (put(b, "-", 1) < 0) return -1;
        return put_u64(b, (uint64_t)(-(v + 1)) + 1);
    }
    return put_u64(b, (uint64_t)v);
}

typedef struct {
    Head *head;
    PyObject *client_ep;
    int to_bus;
    long conn;
    unsigned long long tpl; /* 0: empty slot */
} Memo;

#define MEMO_SLOTS 1024

static PyObject *chunk_of(jbuf *b) {
    PyObject *o = PyBytes_FromStringAndSize(b->p, (Py_ssize_t)b->len);
    b->len = 0;
    return o;
}

static int flush_chunk(jbuf *b, PyObject *out) {
    if (!b->len) return 0;
    PyObject *o = chunk_of(b);
    if (!o) return -1;
    int rc = PyList_Append(out, o);
    Py_DECREF(o);
    return rc;
}

/* Append what a callback returned: one bytes object (empty: nothing) or a list of them. */
static int append_returned(jbuf *b, PyObject *out, PyObject *got) {
    if (PyBytes_Check(got)) return PyBytes_GET_SIZE(got) ? put_bytes(b, got) : 0;
    if (!PyList_Check(got)) {
        PyErr_SetString(PyExc_TypeError, "expected bytes or a list of bytes");
        return -1;
    }
    if (flush_chunk(b, out) < 0) return -1;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(got); k++)
        if (PyList_Append(out, PyList_GET_ITEM(got, k)) < 0) return -1;
    return 0;
}

/* Our turn for one of Python's records (its number comes next): ``ours()`` encodes it. */
static int encode_theirs(jbuf *b, PyObject *out, PyObject *ours) {
    PyObject *got = PyObject_CallNoArgs(ours);
    if (!got) return -1;
    int rc = append_returned(b, out, got);
    Py_DECREF(got);
    return rc;
}

static PyObject *plane_encode(Plane *pl, PyObject *args) {
    PyObject *bounds, *templates, *ours;
    Py_ssize_t slice = 1 << 20;
    if (!PyArg_ParseTuple(args, "OOO|n", &bounds, &templates, &ours, &slice)) return NULL;
    PyObject *fast = PySequence_Fast(bounds, "bounds must be a sequence");
    if (!fast) return NULL;
    Py_ssize_t nb = PySequence_Fast_GET_SIZE(fast), bi = 0;
    PyObject *out = PyList_New(0);
    Memo *memo = calloc(MEMO_SLOTS, sizeof(Memo));
    jbuf b = {NULL, 0, 0};
    int own_out = !pl->encoding; /* a callback may encode again: that one gets its own buffer */
    if (own_out) {
        b = pl->out;
        b.len = 0;
        pl->out = (jbuf){NULL, 0, 0};
        pl->encoding = 1;
    }
    /* take the queued records out; forwarding goes on queueing new ones meanwhile */
    pthread_mutex_lock(&pl->mu);
    size_t i = 0, n = pl->nrecs;
    Rec *recs = pl->recs;
    unsigned char *arena = pl->arena;
    size_t recs_cap = pl->caprecs, arena_cap = pl->arena_cap;
    pl->recs = NULL;
    pl->nrecs = pl->caprecs = 0;
    pl->arena = NULL;
    pl->arena_len = pl->arena_cap = 0;
    pl->block_bytes = 0;
    /* records numbered after a frame Python still holds wait for it (and for the next encode) */
    uint64_t watermark = UINT64_MAX;
    for (size_t k = 0; k < pl->nreserved; k++)
        if (pl->reserved[k] < watermark) watermark = pl->reserved[k];
    size_t keep_from = n;
    while (keep_from > 0 && recs[keep_from - 1].seq >= watermark) keep_from--;
    if (keep_from < n) {
        for (size_t k = keep_from; k < n; k++) {
            Rec *kept = rec_new(pl);
            size_t off = pl->arena_len;
            if (!kept || arena_reserve(pl, recs[k].len) < 0) { /* cannot hold them back: write them now */
                if (kept) pl->nrecs--;
                keep_from = n;
                break;
            }
            *kept = recs[k];
            if (recs[k].block) { /* the block moves with its record */
                recs[k].block = NULL;
                pl->block_bytes += kept->len;
                continue;
            }
            memcpy(pl->arena + off, arena + recs[k].off, recs[k].len);
            kept->off = off;
            pl->arena_len += recs[k].len;
        }
        if (keep_from < n) n = keep_from;
    }
    pl->records_signalled = pl->big_signalled = 0;
    pthread_cond_broadcast(&pl->drained);
    pthread_mutex_unlock(&pl->mu);
    if (!out || !memo) goto fail;
    for (; i < n; i++) {
        Rec *r = &recs[i];
        while (bi < nb) {
            unsigned long long bseq = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, bi));
            if (PyErr_Occurred()) goto fail;
            if (bseq > r->seq) break;
            if (encode_theirs(&b, out, ours) < 0) goto fail;
            bi++;
        }
        Head *hd = r->head;
        PyObject *client_ep = r->owner->client_ep;
        size_t slot = (((uintptr_t)hd >> 4) ^ ((uintptr_t)client_ep >> 4) * 31 ^ r->to_bus) & (MEMO_SLOTS - 1);
        Memo *m = &memo[slot];
        if (m->head != hd || m->client_ep != client_ep || m->to_bus != r->to_bus || m->conn != r->conn || !m->tpl) {
            /* records.Templates numbers the template and, if it is new, gives its definition line */
            PyObject *res = PyObject_CallFunction(templates, "OOOl", hd->facts, client_ep,
                                                  r->to_bus ? Py_True : Py_False, r->conn);
            if (!res) goto fail;
            unsigned long long tpl;
            PyObject *definition;
            if (!PyArg_ParseTuple(res, "KS", &tpl, &definition) || put_bytes(&b, definition) < 0) {
                Py_DECREF(res);
                goto fail;
            }
            Py_DECREF(res);
            m->head = hd;
            m->client_ep = client_ep;
            m->to_bus = r->to_bus;
            m->conn = r->conn;
            m->tpl = tpl;
        }
        /* the bytes of records.compact() */
        if (put(&b, "{\"seq\":", 7) < 0 || put_u64(&b, r->seq) < 0 || put(&b, ",\"ts\":", 6) < 0 ||
            put_i64(&b, r->ts) < 0 || put(&b, ",\"tpl\":", 7) < 0 || put_u64(&b, m->tpl) < 0 ||
            put(&b, ",\"serial\":", 10) < 0 || put_u64(&b, r->serial) < 0 || put(&b, ",\"reply_serial\":", 16) < 0)
            goto nomem;
        if (hd->reply_at >= 0 ? put_u64(&b, r->reply_serial) : put(&b, "null", 4)) goto nomem;
        if (put(&b, ",\"size\":", 8) < 0 || put_u64(&b, r->size) < 0) goto nomem;
        if (r->latency >= 0 && (put(&b, ",\"latency_ns\":", 14) < 0 || put_i64(&b, r->latency) < 0)) goto nomem;
        if (hd->kind == KIND_BYTES && pl->decode_args) {
            /* the raw bytes follow the line, then a newline; large ones as a chunk of their own */
            if (put(&b, ",\"bytes\":", 9) < 0 || put_u64(&b, r->len) < 0 || put(&b, "}\n", 2) < 0) goto nomem;
            if (r->block) {
                PyObject *body = block_wrap(r->block, r->len);
                if (body) r->block = NULL; /* the Block owns it now */
                if (!body || flush_chunk(&b, out) < 0 || PyList_Append(out, body) < 0) {
                    Py_XDECREF(body);
                    goto fail;
                }
                Py_DECREF(body);
            } else if (put(&b, arena + r->off, r->len) < 0) {
                goto nomem;
            }
            if (put(&b, "\n", 1) < 0) goto nomem;
        } else if (hd->kind == KIND_OTHER && pl->decode_args) {
            if (put(&b, ",\"args\":", 8) < 0 || put(&b, arena + r->off, r->len) < 0 || put(&b, "}\n", 2) < 0)
                goto nomem;
        } else if (put(&b, "}\n", 2) < 0) {
            goto nomem;
        }
        if (b.len >= (size_t)slice && flush_chunk(&b, out) < 0) goto fail;
    }
    for (; bi < nb; bi++) {
        unsigned long long bseq = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(fast, bi));
        if (PyErr_Occurred()) goto fail;
        if (bseq >= watermark) break;
        if (encode_theirs(&b, out, ours) < 0) goto fail;
    }
    if (flush_chunk(&b, out) < 0) goto fail;
    {
        PyObject *res = Py_BuildValue("(NKn)", out, (unsigned long long)watermark, (Py_ssize_t)n);
        out = res;
    }
    goto cleanup;
nomem:
    PyErr_NoMemory();
fail:
    Py_CLEAR(out);
cleanup:
    pthread_mutex_lock(&pl->mu);
    for (size_t k = 0; k < n; k++) {
        head_release(recs[k].head);
        recs[k].owner->refs--;
        free(recs[k].block); /* not handed over: encoding failed */
    }
    reap_dead(pl, 0);
    pthread_mutex_unlock(&pl->mu);
    pthread_mutex_lock(&pl->mu);
    if (!pl->spare_recs) {
        pl->spare_recs = recs;
        pl->spare_caprecs = recs_cap;
    } else {
        free(recs);
    }
    if (!pl->spare_arena) {
        pl->spare_arena = arena;
        pl->spare_cap = arena_cap;
    } else {
        free(arena);
    }
    pthread_mutex_unlock(&pl->mu);
    if (own_out) {
        b.len = 0;
        pl->out = b;
        pl->encoding = 0;
    } else {
        free(b.p);
    }
    free(memo);
    Py_DECREF(fast);
    return out;
}

static PyObject *plane_fileno(Plane *pl, PyObject *Py_UNUSED(ignored)) { return PyLong_FromLong(pl->wakefd); }

/* Stop the thread and close every connection (with the GIL; queued records stay to be encoded). */
static void plane_shutdown(Plane *pl) {
    if (pl->thread_running) {
        pthread_mutex_lock(&pl->mu);
        pl->stop = 1;
        pthread_cond_broadcast(&pl->drained);
        pthread_mutex_unlock(&pl->mu);
        poke_thread(pl);
        Py_BEGIN_ALLOW_THREADS
        pthread_join(pl->thread, NULL);
        Py_END_ALLOW_THREADS
        pl->thread_running = 0;
    }
    pthread_mutex_lock(&pl->mu);
    for (size_t b = 0; b < CONN_BUCKETS; b++)
        while (pl->conns[b]) conn_close(pl, pl->conns[b], "", 0);
    pl->batch++;
    reap_dead(pl, 0);
    pthread_mutex_unlock(&pl->mu);
    /* a proxy in a long-lived process (campaign workers) must not keep its descriptors */
    if (pl->epfd >= 0) close(pl->epfd);
    if (pl->pokefd >= 0) close(pl->pokefd);
    if (pl->wakefd >= 0) close(pl->wakefd);
    pl->epfd = pl->pokefd = pl->wakefd = -1;
}

static PyObject *plane_close_all(Plane *pl, PyObject *Py_UNUSED(ignored)) {
    plane_shutdown(pl);
    Py_RETURN_NONE;
}

static PyObject *plane_get_pending(Plane *pl, void *Py_UNUSED(c)) {
    pthread_mutex_lock(&pl->mu);
    size_t n = pl->nrecs;
    pthread_mutex_unlock(&pl->mu);
    return PyLong_FromSize_t(n);
}

static PyObject *plane_get_pending_bytes(Plane *pl, void *Py_UNUSED(c)) {
    pthread_mutex_lock(&pl->mu);
    size_t n = unwritten(pl);
    pthread_mutex_unlock(&pl->mu);
    return PyLong_FromSize_t(n);
}

static PyObject *plane_get_connections(Plane *pl, void *Py_UNUSED(c)) {
    long n = 0;
    pthread_mutex_lock(&pl->mu);
    for (size_t b = 0; b < CONN_BUCKETS; b++)
        for (Conn *c = pl->conns[b]; c; c = c->next) n++;
    pthread_mutex_unlock(&pl->mu);
    return PyLong_FromLong(n);
}

static PyObject *plane_get_compiled(Plane *pl, void *Py_UNUSED(c)) { return PyLong_FromUnsignedLongLong(pl->n_compiled); }
static PyObject *plane_get_handed(Plane *pl, void *Py_UNUSED(c)) { return PyLong_FromUnsignedLongLong(pl->n_handed); }

static int plane_init(Plane *pl, PyObject *args, PyObject *kw) {
    static char *names[] = {"record", "decode_args", NULL};
    int record = 1, decode = 1;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "|pp", names, &record, &decode)) return -1;
    if (pl->epfd >= 0) {
        PyErr_SetString(PyExc_RuntimeError, "a plane is initialised once");
        return -1;
    }
    pl->epfd = epoll_create1(EPOLL_CLOEXEC);
    pl->wakefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    pl->pokefd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (pl->epfd < 0 || pl->wakefd < 0 || pl->pokefd < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    struct epoll_event ev = {0};
    ev.events = EPOLLIN;
    ev.data.ptr = NULL;
    if (epoll_ctl(pl->epfd, EPOLL_CTL_ADD, pl->pokefd, &ev) < 0) {
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pl->record = record;
    pl->decode_args = decode;
    int rc = pthread_create(&pl->thread, NULL, forward_loop, pl);
    if (rc != 0) {
        errno = rc;
        PyErr_SetFromErrno(PyExc_OSError);
        return -1;
    }
    pl->thread_running = 1;
    return 0;
}

static void plane_dealloc(Plane *pl) {
    plane_shutdown(pl);
    reap_dead(pl, 1);
    heads_forget_all(pl->heads, &pl->nheads);
    for (size_t k = 0; k < pl->nrecs; k++) {
        head_release(pl->recs[k].head);
        free(pl->recs[k].block);
    }
    reap_dead(pl, 1);
    free(pl->recs);
    free(pl->arena);
    for (size_t k = 0; k < pl->nevents; k++) {
        free(pl->events[k].data);
        free(pl->events[k].reason);
    }
    free(pl->events);
    free(pl->reserved);
    free(pl->spare_arena);
    free(pl->spare_recs);
    free(pl->out.p);
    if (pl->epfd >= 0) close(pl->epfd);
    if (pl->wakefd >= 0) close(pl->wakefd);
    if (pl->pokefd >= 0) close(pl->pokefd);
    pthread_mutex_destroy(&pl->mu);
    pthread_cond_destroy(&pl->drained);
    Py_TYPE(pl)->tp_free((PyObject *)pl);
}

static PyObject *plane_new(PyTypeObject *type, PyObject *Py_UNUSED(args), PyObject *Py_UNUSED(kw)) {
    Plane *pl = (Plane *)type->tp_alloc(type, 0);
    if (pl) {
        pl->epfd = pl->wakefd = pl->pokefd = -1;
        pthread_mutex_init(&pl->mu, NULL);
        pthread_cond_init(&pl->drained, NULL);
    }
    return (PyObject *)pl;
}

static PyMethodDef plane_methods[] = {
    {"fileno", (PyCFunction)plane_fileno, METH_NOARGS, "The eventfd that says there are events or records for Python."},
    {"take_events", (PyCFunction)plane_take_events, METH_NOARGS,
     "Events for Python, in order: ('frame', id, from_client, raw, ts, seq), ('closed', id, reason), "
     "('malformed', id, from_client, fixed_header), ('stalled', 0, waited_ns)"},
    {"adopt", (PyCFunction)plane_adopt, METH_VARARGS,
     "adopt(id, client_fd, bus_fd, client_unix_fds, bus_unix_fds, client_endpoint, client_bytes, bus_bytes, "
     "to_client, to_bus)"},
    {"send", (PyCFunction)plane_send, METH_VARARGS, "send(id, to_bus, data, fds=None) -> False if closed"},
    {"resume", (PyCFunction)plane_resume, METH_VARARGS, "resume(id, from_client, seq): Python has recorded and sent that side's frame"},
    {"take_fds", (PyCFunction)plane_take_fds, METH_VARARGS, "take_fds(id, from_client, n) -> list of fds"},
    {"close", (PyCFunction)plane_close, METH_VARARGS, "close(id): close a connection's two sockets"},
    {"close_all", (PyCFunction)plane_close_all, METH_NOARGS, "Stop forwarding and close every connection."},
    {"learn", (PyCFunction)plane_learn, METH_VARARGS, "Remember a header the strict path accepted."},
    {"note_call", (PyCFunction)plane_note_call, METH_VARARGS, "note_call(id, to_bus, name, serial, ts)"},
    {"take_call", (PyCFunction)plane_take_call, METH_VARARGS, "take_call(id, to_bus, name, serial) -> ts or None"},
    {"next_seq", (PyCFunction)plane_next_seq, METH_NOARGS, "The next record number."},
    {"encode", (PyCFunction)plane_encode, METH_VARARGS,
     "encode(bounds, endpoints, slice=1MiB) -> (JSON-line chunks with None where each seq of bounds goes, "
     "watermark: records from this number on were held back, records encoded)"},
    {NULL, NULL, 0, NULL},
};

static PyGetSetDef plane_getset[] = {
    {"compiled", (getter)plane_get_compiled, NULL, "frames forwarded by the plane alone", NULL},
    {"handed", (getter)plane_get_handed, NULL, "frames handed to the Python side", NULL},
    {"pending", (getter)plane_get_pending, NULL, "records queued", NULL},
    {"pending_bytes", (getter)plane_get_pending_bytes, NULL, "argument bytes queued", NULL},
    {"connections", (getter)plane_get_connections, NULL, "open connections", NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyTypeObject PlaneType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "ipcproxy.dbus._plane.Plane",
    .tp_basicsize = sizeof(Plane),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The compiled forwarding and recording of frames with known headers.",
    .tp_new = plane_new,
    .tp_init = (initproc)plane_init,
    .tp_dealloc = (destructor)plane_dealloc,
    .tp_methods = plane_methods,
    .tp_getset = plane_getset,
};

static PyMethodDef module_methods[] = {
    {"args_to_json", (PyCFunction)(void (*)(void))py_args_to_json, METH_FASTCALL,
     "args_to_json(body, signature, little_endian) -> JSON bytes, or None"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_plane", NULL, -1, module_methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__plane(void) {
    if (PyType_Ready(&PlaneType) < 0 || PyType_Ready(&BlockType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    Py_INCREF(&PlaneType);
    if (PyModule_AddObject(m, "Plane", (PyObject *)&PlaneType) < 0) {
        Py_DECREF(&PlaneType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
