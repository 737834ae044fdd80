/* Ping-pong between two processes: N round trips of SIZE bytes over a pipe pair or a socketpair.
 * The workload of bench/syscall_trace.py: one write and one read per message on each side. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
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

int main(int argc, char **argv) {
    if (argc != 4 || (strcmp(argv[1], "pipe") && strcmp(argv[1], "socketpair"))) {
        fprintf(stderr, "usage: pingpong pipe|socketpair ROUNDS SIZE\n");
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
        if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv)) return perror("socketpair"), 1;
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
