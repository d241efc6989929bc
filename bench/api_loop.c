/* api_loop: calls zlib's adler32() N times, for bench/api_trace.sh.
 *
 *   api_loop N [REPORT]
 *
 * Each call checksums 16 bytes that change every iteration, and every result is folded
 * into a sum that is printed, so no call can be optimised away (adler32 lives in
 * libz.so.1 anyway and is called through the PLT). The loop alone is timed with
 * CLOCK_MONOTONIC; its time is printed on stdout and, when REPORT is given, written to
 * that file as "loop_ns N sum" (so a tool that swallows the program's stdout still lets
 * the script read it).
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <zlib.h>

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int main(int argc, char **argv) {
    long n = argc > 1 ? atol(argv[1]) : 200000;
    if (n <= 0) {
        fprintf(stderr, "usage: %s N [REPORT]\n", argv[0]);
        return 2;
    }
    unsigned char buf[16];
    memset(buf, 0x5a, sizeof buf);
    volatile uLong sink = 0;
    uLong sum = 0;

    uint64_t start = now_ns();
    for (long i = 0; i < n; i++) {
        buf[i & 15] = (unsigned char)i;
        uLong a = adler32(1, buf, sizeof buf);
        sum += a;
        sink = a;
    }
    uint64_t loop_ns = now_ns() - start;
    (void)sink;

    printf("api_loop: %ld calls in %llu ns (%.1f ns/call), sum %lu\n", n, (unsigned long long)loop_ns,
           (double)loop_ns / (double)n, sum);
    if (argc > 2) {
        FILE *f = fopen(argv[2], "w");
        if (f == NULL) {
            perror(argv[2]);
            return 1;
        }
        fprintf(f, "%llu %ld %lu\n", (unsigned long long)loop_ns, n, sum);
        fclose(f);
    }
    return 0;
}
