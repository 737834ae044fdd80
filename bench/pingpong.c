/* Ping-pong between two processes: N round trips of SIZE bytes over a pipe pair, a socketpair,
 * or a Unix stream socket (bound to a path, connected, accepted).
 * The workload of bench/syscall_trace.py: one write and one read per message on each side. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

static void full(int fd, char *buf, size_t n, int out) {
    size_t done = 0;
    while (done < n) {
        ssize_t got = out ? write(fd, buf + done, n - done) : read(fd, buf + done, n - done);
        if (got <= 0) {
            perror(out ? "write" : "read");
            exit(1);
        }
        done += (size_t)got;
    }
}

/* A connected pair through a listening socket at a fresh path: [0] the accepted end, [1] the client's. */
static int unix_pair(int sv[2]) {
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    snprintf(addr.sun_path, sizeof addr.sun_path, "/tmp/pingpong-%d.sock", (int)getpid());
    unlink(addr.sun_path);
    int listener = socket(AF_UNIX, SOCK_STREAM, 0);
    if (listener < 0 || bind(listener, (struct sockaddr *)&addr, sizeof addr) || listen(listener, 1)) return -1;
    sv[1] = socket(AF_UNIX, SOCK_STREAM, 0);
    if (sv[1] < 0 || connect(sv[1], (struct sockaddr *)&addr, sizeof addr)) return -1;
    sv[0] = accept(listener, NULL, NULL);
    close(listener);
    unlink(addr.sun_path);
    return sv[0] < 0 ? -1 : 0;
}

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "pipe") && strcmp(argv[1], "socketpair") && strcmp(argv[1], "unix"))) {
        fprintf(stderr, "usage: pingpong pipe|socketpair|unix ROUNDS SIZE\n");
        return 2;
    }
    long rounds = atol(argv[2]);
    size_t size = (size_t)atol(argv[3]);
    char *buf = calloc(1, size ? size : 1);
    int to_child[2], to_parent[2];
    if (!strcmp(argv[1], "pipe")) {
        if (pipe(to_child) || pipe(to_parent)) return perror("pipe"), 1;
    } else {
        int sv[2];
        if (!strcmp(argv[1], "socketpair") ? socketpair(AF_UNIX, SOCK_STREAM, 0, sv) : unix_pair(sv))
            return perror(argv[1]), 1;
        to_child[0] = sv[1], to_child[1] = sv[0], to_parent[0] = sv[0], to_parent[1] = sv[1];
    }
    pid_t pid = fork();
    if (pid == 0) {
        for (long i = 0; i < rounds; i++) {
            full(to_child[0], buf, size, 0);
            full(to_parent[1], buf, size, 1);
        }
        return 0;
    }
    for (long i = 0; i < rounds; i++) {
        full(to_child[1], buf, size, 1);
        full(to_parent[0], buf, size, 0);
    }
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 1;
}
