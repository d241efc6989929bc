/* repeat REPORT N PROG ARGS...: run PROG N times, one after the other (stdin, stdout and
 * stderr on /dev/null, opened once), and write the median wall time of one run in nanoseconds to
 * REPORT. Under `hermes launch` this measures what a program costs inside a running
 * session: HERMES's start-up (launcher, broker) is paid once, outside the timed runs. */
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>

extern char **environ;

static int by_value(const void *a, const void *b) {
    long long x = *(const long long *)a, y = *(const long long *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: repeat REPORT N PROG ARGS...\n");
        return 2;
    }
    int n = atoi(argv[2]);
    if (n < 1 || n > 1000) return 2;
    long long *runs = calloc(n, sizeof *runs);
    /* /dev/null is opened here, once: opened by each spawned child (addopen), it made
     * three opens per run that a policy watching opens observes, in a vfork child that
     * connects to the broker for them (~0.1 ms per run), which is the harness's cost,
     * not the program's. */
    int null_in = open("/dev/null", O_RDONLY | O_CLOEXEC), null_out = open("/dev/null", O_WRONLY | O_CLOEXEC);
    if (null_in < 0 || null_out < 0) return 1;
    posix_spawn_file_actions_t quiet;
    posix_spawn_file_actions_init(&quiet);
    for (int fd = 0; fd <= 2; fd++) posix_spawn_file_actions_adddup2(&quiet, fd ? null_out : null_in, fd);
    for (int i = 0; i < n; i++) {
        struct timespec a, b;
        clock_gettime(CLOCK_MONOTONIC, &a);
        pid_t pid;
        if (posix_spawnp(&pid, argv[3], &quiet, NULL, argv + 3, environ) != 0) return 127;
        int status;
        if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "repeat: %s failed (status %d)\n", argv[3], status);
            return 1;
        }
        clock_gettime(CLOCK_MONOTONIC, &b);
        runs[i] = (b.tv_sec - a.tv_sec) * 1000000000LL + (b.tv_nsec - a.tv_nsec);
    }
    qsort(runs, n, sizeof *runs, by_value);
    FILE *report = fopen(argv[1], "w");
    if (!report) return 1;
    fprintf(report, "%lld\n", runs[n / 2]);
    return fclose(report) ? 1 : 0;
}
