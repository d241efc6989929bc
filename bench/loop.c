/* bench/loop.c: the static loop bench/ptrace.sh times under each tracer.
 *
 *   loop openat N PATH   N x (openat(AT_FDCWD, PATH, O_RDONLY); close)
 *   loop getppid N       N x getppid (a call no tracer here mediates: the control)
 *
 * Prints the loop's own wall time in nanoseconds, so start-up (the broker, the
 * tracer's attach, strace's) stays out of the per-call figures. Raw syscalls: what
 * is timed is the kernel entry and whatever stops it, not libc.
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: loop openat N PATH | loop getppid N\n");
        return 2;
    }
    long n = atol(argv[2]);
    long long start = now_ns();
    if (!strcmp(argv[1], "openat") && argc == 4) {
        for (long i = 0; i < n; i++) {
            long fd = syscall(SYS_openat, AT_FDCWD, argv[3], O_RDONLY);
            if (fd < 0) {
                perror("openat");
                return 1;
            }
            syscall(SYS_close, fd);
        }
    } else if (!strcmp(argv[1], "getppid")) {
        for (long i = 0; i < n; i++) syscall(SYS_getppid);
    } else {
        fprintf(stderr, "unknown loop %s\n", argv[1]);
        return 2;
    }
    printf("%lld\n", now_ns() - start);
    return 0;
}
