/* steps.h: what the step-driven test programs share (depth, depth_static,
 * static_calls, static_faults, ring_events): errno names, splitting a step
 * "OP:ARG:…", open flags from letters, the loopback address, and reporting an
 * opened descriptor. Each is `static inline`, so a program that uses only some of
 * them still builds under -Wall -Werror. Needs -D_GNU_SOURCE (strerrorname_np).
 */
#ifndef HERMES_TEST_STEPS_H
#define HERMES_TEST_STEPS_H

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static inline const char *errname(int e) {
    const char *name = strerrorname_np(e);
    return name ? name : "E?";
}

/* Split `s` in place at each ':' into at most `max` fields; returns how many. */
static inline int split(char *s, char **out, int max) {
    int n = 0;
    out[n++] = s;
    for (char *p = s; *p && n < max; p++) {
        if (*p == ':') {
            *p = 0;
            out[n++] = p + 1;
        }
    }
    return n;
}

/* Open flags from letters: r (O_RDONLY), w (O_WRONLY), b (O_RDWR), c (O_CREAT),
 * t (O_TRUNC), a (O_APPEND), e (O_CLOEXEC). */
static inline int flags_of(const char *spec) {
    int flags = O_RDONLY;
    for (const char *c = spec; *c; c++) {
        switch (*c) {
        case 'r': flags = (flags & ~O_ACCMODE) | O_RDONLY; break;
        case 'w': flags = (flags & ~O_ACCMODE) | O_WRONLY; break;
        case 'b': flags = (flags & ~O_ACCMODE) | O_RDWR; break;
        case 'c': flags |= O_CREAT; break;
        case 't': flags |= O_TRUNC; break;
        case 'a': flags |= O_APPEND; break;
        case 'e': flags |= O_CLOEXEC; break;
        }
    }
    return flags;
}

/* 127.0.0.1:PORT. */
static inline void loopback(const char *port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)atoi(port));
    sa->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
}

/* "STEP = ERR ENAME", or "STEP = OK" with the first line the descriptor reads, if
 * any; the descriptor is closed. */
static inline void report_fd(const char *step, long fd, int err) {
    if (fd < 0) {
        printf("%s = ERR %s\n", step, errname(err));
        return;
    }
    char buf[256] = {0};
    ssize_t n = read((int)fd, buf, sizeof buf - 1);
    if (n > 0) {
        buf[strcspn(buf, "\n")] = 0;
        printf("%s = OK %s\n", step, buf);
    } else {
        printf("%s = OK\n", step);
    }
    close((int)fd);
}

#endif
