/* bench/open_loop.c: N x (open(PATH) via libc; close), timed by the program itself.
 * The dynamic loop bench/strict.sh runs under the preload alone and under --strict.
 *
 *   open_loop N PATH      prints the loop's wall time in nanoseconds
 */
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: open_loop N PATH\n");
        return 2;
    }
    long n = atol(argv[1]);
    long long start = now_ns();
    for (long i = 0; i < n; i++) {
        int fd = open(argv[2], O_RDONLY);
        if (fd < 0) {
            perror("open");
            return 1;
        }
        close(fd);
    }
    printf("%lld\n", now_ns() - start);
    return 0;
}
