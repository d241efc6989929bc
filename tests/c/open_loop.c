// gcc: -D_GNU_SOURCE
/* open_loop: a long-running target for hot-reload tests. Every 10 ms it opens each
 * PATH read-only and appends one line per attempt to LOG, until the file STOP exists
 * (or 25 s pass: exit 3, so that a test that forgets to stop it cannot hang).
 *
 *   open_loop LOG STOP FORK PATH [PATH...]
 *
 * FORK 1: fork once before the first attempt; parent and child both loop (the parent
 * waits for the child and exits 4 if the child failed). LOG is opened once, before
 * the fork, with O_APPEND, so lines from both processes never interleave.
 *
 * Each LOG line:  "<CLOCK_MONOTONIC ns after the call> <pid> <path index> OK" or
 * "... ERR <ERRNAME>". The test compares the times with its own CLOCK_MONOTONIC.
 * STOP is polled with access(2), which HERMES does not mediate.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "E%d", e);
        return buf;
    }
    }
}

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: open_loop LOG STOP FORK PATH...\n");
        return 2;
    }
    int log = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (log < 0) {
        fprintf(stderr, "open_loop: cannot open %s: %s\n", argv[1], strerror(errno));
        return 2;
    }
    pid_t child = 0;
    if (atoi(argv[3]) == 1) {
        child = fork();
        if (child < 0) {
            perror("fork");
            return 2;
        }
    }
    long long deadline = now_ns() + 25000000000LL;
    int status = 3;
    while (now_ns() < deadline) {
        if (access(argv[2], F_OK) == 0) {
            status = 0;
            break;
        }
        for (int i = 4; i < argc; i++) {
            int fd = open(argv[i], O_RDONLY);
            int err = errno;
            long long t = now_ns();
            char line[128];
            int n;
            if (fd >= 0) {
                close(fd);
                n = snprintf(line, sizeof line, "%lld %d %d OK\n", t, (int)getpid(), i - 4);
            } else {
                n = snprintf(line, sizeof line, "%lld %d %d ERR %s\n", t, (int)getpid(), i - 4, errname(err));
            }
            if (write(log, line, n) != n) return 2;
        }
        struct timespec pause = {0, 10000000};
        nanosleep(&pause, NULL);
    }
    if (child > 0) {
        int ws;
        if (waitpid(child, &ws, 0) != child || !WIFEXITED(ws) || WEXITSTATUS(ws) != 0) return 4;
    }
    return status;
}
