/* exec_cost ROUNDS N VARIANT...: what one exec'd image costs, variant by variant.
 *
 * A VARIANT is NAME=ENVFILE=PROG: N times, fork and execve PROG (no arguments) with the
 * environment in ENVFILE (one NAME=value per line), and wait for it. The variants take
 * turns within each of ROUNDS rounds, so drift on a noisy machine hits them alike. This
 * process is not under HERMES and makes the exec with a raw system call: only the child
 * image pays for what its environment asks (LD_PRELOAD, HERMES_*), not the parent.
 *
 * Prints one line per variant: NAME, the median over rounds of the wall time of one
 * fork + exec + wait in microseconds, the fastest round, the child's minor page faults per
 * exec and its CPU time (user + system) per exec in microseconds (getrusage of the
 * children: the fork child before its exec included). Wall time beyond the CPU time is
 * time the child spent off its CPU: waiting, or preempted. A child that fails stops the run with status 1.
 *
 * Run with no arguments (as a variant's PROG), it opens its own file once and exits: a
 * child that makes one open call, which a policy watching opens sees.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

struct variant {
    char *name, *prog;
    char **env;
    double *us;
    double faults, cpu_us;
};

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void *need(void *p) {
    if (p == NULL) {
        perror("exec_cost");
        exit(1);
    }
    return p;
}

static char **read_env(const char *path) {
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        perror(path);
        exit(1);
    }
    size_t n = 0, cap = 64;
    char **env = need(malloc(cap * sizeof *env));
    char *line = NULL;
    size_t len = 0;
    ssize_t got;
    while ((got = getline(&line, &len, f)) > 0) {
        if (line[got - 1] == '\n') line[got - 1] = '\0';
        if (n + 2 > cap) env = need(realloc(env, (cap *= 2) * sizeof *env));
        env[n++] = need(strdup(line));
    }
    env[n] = NULL;
    free(line);
    fclose(f);
    return env;
}

static double cpu_us(const struct rusage *r) {
    return (r->ru_utime.tv_sec + r->ru_stime.tv_sec) * 1e6 + r->ru_utime.tv_usec + r->ru_stime.tv_usec;
}

static int by_value(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc == 1) {
        int fd = open(argv[0], O_RDONLY | O_CLOEXEC);
        return fd < 0 ? 1 : close(fd);
    }
    if (argc < 4) {
        fprintf(stderr, "usage: exec_cost ROUNDS N NAME=ENVFILE=PROG...\n");
        return 2;
    }
    int rounds = atoi(argv[1]);
    long n = atol(argv[2]);
    if (rounds < 1 || n < 1) {
        fprintf(stderr, "exec_cost: ROUNDS and N must be at least 1\n");
        return 2;
    }
    int count = argc - 3;
    struct variant *vs = need(calloc(count, sizeof *vs));
    for (int v = 0; v < count; v++) {
        char *spec = need(strdup(argv[3 + v]));
        char *file = strchr(spec, '=');
        char *prog = file ? strchr(file + 1, '=') : NULL;
        if (prog == NULL) {
            fprintf(stderr, "exec_cost: %s is not NAME=ENVFILE=PROG\n", argv[3 + v]);
            return 2;
        }
        *file++ = '\0';
        *prog++ = '\0';
        vs[v] = (struct variant){spec, prog, read_env(file), need(calloc(rounds, sizeof(double))), 0, 0};
    }
    for (int r = 0; r < rounds; r++) {
        for (int v = 0; v < count; v++) {
            struct rusage before, after;
            getrusage(RUSAGE_CHILDREN, &before);
            long long start = now_ns();
            for (long i = 0; i < n; i++) {
                pid_t pid = fork();
                if (pid < 0) {
                    perror("fork");
                    return 1;
                }
                if (pid == 0) {
                    char *child_argv[] = {vs[v].prog, NULL};
                    syscall(SYS_execve, vs[v].prog, child_argv, vs[v].env);
                    _exit(127);
                }
                int status = 0;
                if (waitpid(pid, &status, 0) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                    fprintf(stderr, "exec_cost: %s: %s failed (status 0x%x)\n", vs[v].name, vs[v].prog, status);
                    return 1;
                }
            }
            vs[v].us[r] = (now_ns() - start) / 1e3 / n;
            getrusage(RUSAGE_CHILDREN, &after);
            vs[v].faults += (double)(after.ru_minflt - before.ru_minflt) / n / rounds;
            vs[v].cpu_us += (cpu_us(&after) - cpu_us(&before)) / n / rounds;
        }
    }
    for (int v = 0; v < count; v++) {
        qsort(vs[v].us, rounds, sizeof(double), by_value);
        printf("%s %.1f %.1f %.1f %.1f\n", vs[v].name, vs[v].us[rounds / 2], vs[v].us[0], vs[v].faults, vs[v].cpu_us);
    }
    return 0;
}
