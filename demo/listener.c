/*
 * listener: a tiny TCP echo server for demo/run.sh.
 *   listener PORT [N]
 * Binds 127.0.0.1:PORT, prints "[listener] listening on 127.0.0.1:PORT" once
 * ready, then serves N connections (default 1) one after another: reads one
 * line and replies "echo: <line>". Exits after N connections or when killed.
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Read up to one line (or until EOF / full buffer); returns its length. */
static size_t read_line(int fd, char *buf, size_t cap)
{
    size_t n = 0;
    while (n < cap && (n == 0 || buf[n - 1] != '\n')) {
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        n += (size_t)r;
    }
    char *nl = memchr(buf, '\n', n);
    return nl ? (size_t)(nl - buf) : n;
}

static void write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

int main(int argc, char **argv)
{
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: %s PORT [CONNECTIONS]\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    long count = argc > 2 ? atol(argv[2]) : 1;
    if (port <= 0 || port > 65535 || count <= 0) {
        fprintf(stderr, "listener: bad PORT or CONNECTIONS\n");
        return 2;
    }

    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) {
        perror("listener: socket");
        return 1;
    }
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(s, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(s, 8) < 0) {
        perror("listener: bind/listen");
        return 1;
    }
    printf("[listener] listening on 127.0.0.1:%d\n", port);
    fflush(stdout);

    for (long i = 0; i < count; i++) {
        int c = accept(s, NULL, NULL);
        if (c < 0) {
            if (errno == EINTR) {
                i--;
                continue;
            }
            perror("listener: accept");
            return 1;
        }
        char line[512], reply[600];
        size_t n = read_line(c, line, sizeof line);
        int len = snprintf(reply, sizeof reply, "echo: %.*s\n", (int)n, line);
        write_all(c, reply, (size_t)len);
        close(c);
    }
    close(s);
    return 0;
}
