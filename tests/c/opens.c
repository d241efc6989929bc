// gcc: -D_GNU_SOURCE
/* opens: open each PATH read-only, print its result and how long the call took,
 * then exit with EXIT.
 *
 *   opens EXIT PATH [PATH...]
 *
 * Output, one line per path:  "PATH = OK <first line> (<ms> ms)"  or
 * "PATH = ERR <ERRNAME> (<ms> ms)".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EROFS: return "EROFS";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "E%d", e);
        return buf;
    }
    }
}

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000L + ts.tv_nsec / 1000000L;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 2) {
        fprintf(stderr, "usage: opens EXIT PATH...\n");
        return 2;
    }
    for (int i = 2; i < argc; i++) {
        long start = now_ms();
        int fd = open(argv[i], O_RDONLY);
        int err = errno;
        long ms = now_ms() - start;
        if (fd < 0) {
            printf("%s = ERR %s (%ld ms)\n", argv[i], errname(err), ms);
            continue;
        }
        char buf[256] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n > 0) buf[strcspn(buf, "\n")] = 0;
        printf("%s = OK %s (%ld ms)\n", argv[i], buf, ms);
        close(fd);
    }
    return atoi(argv[1]);
}
