/* Bare compiled byte forwarder: the floor row of ipcproxy's benchmark.
 *
 * Listens on a unix socket; for each client it connects to the upstream unix
 * socket and relays bytes both ways, unchanged (the SASL handshake included).
 * It parses nothing and passes no file descriptors: what any intermediary
 * costs on this machine before it does anything with the messages.
 *
 * Single-threaded, level-triggered epoll, non-blocking sockets. Each
 * direction has one output buffer: data read from one side is written to the
 * other at once; what the socket does not take waits in the buffer, the
 * destination is watched for EPOLLOUT, and the source is not read until the
 * buffer has drained. EOF or an error on either side closes both.
 *
 *   cfwd UPSTREAM_PATH LISTEN_PATH      (prints READY once listening)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define BUFSZ (256 * 1024)
#define MAXEV 64

struct pair;

struct end {
    struct pair *pair;
    int fd;
    unsigned mask;    /* events currently registered */
    char *out;        /* bytes waiting to be written to fd */
    size_t off, len;
};

struct pair {
    struct end end[2]; /* 0: client, 1: upstream */
    int dead;
    struct pair *next_dead;
};

static int ep;
static const char *upstream;
static struct pair *graveyard; /* closed pairs, freed after the current batch of events */

static void die(const char *what) {
    perror(what);
    exit(1);
}

static int unix_addr(struct sockaddr_un *sa, const char *path) {
    memset(sa, 0, sizeof *sa);
    sa->sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sa->sun_path)
        return -1;
    strcpy(sa->sun_path, path);
    return 0;
}

static void set_mask(struct end *e, unsigned mask) {
    if (mask == e->mask)
        return;
    struct epoll_event ev = {.events = mask, .data.ptr = e};
    if (epoll_ctl(ep, EPOLL_CTL_MOD, e->fd, &ev) < 0)
        die("epoll_ctl");
    e->mask = mask;
}

static void close_pair(struct pair *p) {
    if (p->dead)
        return;
    p->dead = 1;
    for (int i = 0; i < 2; i++)
        if (p->end[i].fd >= 0)
            close(p->end[i].fd); /* also drops it from the epoll set */
    p->next_dead = graveyard;
    graveyard = p;
}

/* Write what e->out holds to e->fd. Returns -1 on error, else 0 (maybe partial). */
static int flush_out(struct end *e) {
    while (e->len > 0) {
        ssize_t n = send(e->fd, e->out + e->off, e->len, MSG_NOSIGNAL | MSG_DONTWAIT);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return 0;
            return -1;
        }
        e->off += (size_t)n;
        e->len -= (size_t)n;
    }
    e->off = 0;
    return 0;
}

/* src is readable: read into the peer's output buffer (empty, or src would not be watched) and send it on. */
static void on_readable(struct end *src) {
    struct pair *p = src->pair;
    struct end *dst = &p->end[src == &p->end[0]];
    ssize_t n;
    do
        n = recv(src->fd, dst->out, BUFSZ, MSG_DONTWAIT);
    while (n < 0 && errno == EINTR);
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
        return;
    if (n <= 0) {
        close_pair(p);
        return;
    }
    dst->off = 0;
    dst->len = (size_t)n;
    if (flush_out(dst) < 0) {
        close_pair(p);
        return;
    }
    if (dst->len > 0) { /* backed up: wait for dst to take it, stop reading src */
        set_mask(dst, dst->mask | EPOLLOUT);
        set_mask(src, src->mask & ~(unsigned)EPOLLIN);
    }
}

/* dst is writable again: finish its buffer, then resume reading its peer. */
static void on_writable(struct end *dst) {
    struct pair *p = dst->pair;
    struct end *src = &p->end[dst == &p->end[0]];
    if (flush_out(dst) < 0) {
        close_pair(p);
        return;
    }
    if (dst->len == 0) {
        set_mask(dst, dst->mask & ~(unsigned)EPOLLOUT);
        set_mask(src, src->mask | EPOLLIN);
    }
}

static void on_accept(int lfd) {
    for (;;) {
        int cfd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (cfd < 0) {
            if (errno == EINTR)
                continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK)
                perror("accept4");
            return;
        }
        struct sockaddr_un sa;
        int ufd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (ufd < 0 || unix_addr(&sa, upstream) < 0 || connect(ufd, (struct sockaddr *)&sa, sizeof sa) < 0 ||
            fcntl(ufd, F_SETFL, O_NONBLOCK) < 0) {
            perror("upstream");
            if (ufd >= 0)
                close(ufd);
            close(cfd);
            continue;
        }
        struct pair *p = calloc(1, sizeof *p);
        if (p == NULL)
            die("calloc");
        int fds[2] = {cfd, ufd};
        for (int i = 0; i < 2; i++) {
            struct end *e = &p->end[i];
            e->pair = p;
            e->fd = fds[i];
            e->mask = EPOLLIN;
            if ((e->out = malloc(BUFSZ)) == NULL)
                die("malloc");
            struct epoll_event ev = {.events = EPOLLIN, .data.ptr = e};
            if (epoll_ctl(ep, EPOLL_CTL_ADD, e->fd, &ev) < 0)
                die("epoll_ctl");
        }
    }
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: cfwd UPSTREAM_PATH LISTEN_PATH\n");
        return 2;
    }
    upstream = argv[1];
    const char *listen_path = argv[2];
    signal(SIGPIPE, SIG_IGN);

    struct sockaddr_un sa;
    if (unix_addr(&sa, listen_path) < 0 || unix_addr(&(struct sockaddr_un){0}, upstream) < 0) {
        fprintf(stderr, "cfwd: socket path too long\n");
        return 2;
    }
    int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (lfd < 0)
        die("socket");
    unlink(listen_path);
    if (bind(lfd, (struct sockaddr *)&sa, sizeof sa) < 0)
        die("bind");
    if (listen(lfd, SOMAXCONN) < 0)
        die("listen");
    if ((ep = epoll_create1(EPOLL_CLOEXEC)) < 0)
        die("epoll_create1");
    struct epoll_event lev = {.events = EPOLLIN, .data.ptr = NULL};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &lev) < 0)
        die("epoll_ctl");
    printf("READY\n");
    fflush(stdout);

    struct epoll_event evs[MAXEV];
    for (;;) {
        int n = epoll_wait(ep, evs, MAXEV, -1);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("epoll_wait");
        }
        for (int i = 0; i < n; i++) {
            struct end *e = evs[i].data.ptr;
            unsigned what = evs[i].events;
            if (e == NULL) {
                on_accept(lfd);
                continue;
            }
            if (e->pair->dead)
                continue;
            if (what & EPOLLERR) {
                close_pair(e->pair);
                continue;
            }
            if (what & EPOLLOUT)
                on_writable(e);
            if (e->pair->dead)
                continue;
            if (what & (EPOLLIN | EPOLLHUP)) {
                if (e->mask & EPOLLIN)
                    on_readable(e); /* a hang-up reads as EOF */
                else if (!(what & EPOLLIN))
                    close_pair(e->pair); /* hung up while its peer is backed up */
            }
        }
        while (graveyard) {
            struct pair *p = graveyard;
            graveyard = p->next_dead;
            free(p->end[0].out);
            free(p->end[1].out);
            free(p);
        }
    }
}
