/* bench/workload.c: the loops bench/run.sh times under each runner.
 *
 *   workload MODE N REPORT [ARG]
 *
 *   open N REPORT PATH       N x (open(PATH, O_RDONLY); close) through libc
 *   open2t N REPORT PATH     the same N calls split over two threads running at once
 *   openburst N REPORT PATH  the N calls in bursts of 400, 15 ms apart, only the bursts
 *                            timed: the program's own cost of an observed open while
 *                            its event ring has room (the broker reads it in the pauses)
 *   write N REPORT           N x write(fd, 1 byte) to /dev/null (opened once)
 *   connect N REPORT PORT    N x (socket; connect to 127.0.0.1:PORT; close with RST)
 *   sendto N REPORT PORT     N x sendto(16 bytes) on one UDP socket to 127.0.0.1:PORT
 *   badsendto N REPORT       N x sendto on fd -1 (EBADF at once): the cost of the hook
 *                            itself, without the network stack's noise around it
 *   paired KIND N REPORT [PATH]  N calls through libc and N the same calls made with
 *                            syscall(2), in alternating blocks of 256, each side timed
 *                            apart: REPORT gets "LIBC_NS RAW_NS". KIND: open (PATH,
 *                            closed with a raw close), write (/dev/null), badsendto.
 *                            Both sides run in the same process at the same moments, so
 *                            the difference is the cost a hook adds to a libc call, free
 *                            of the run-to-run noise of the system call itself.
 *   forkexec N REPORT PROG   N x (fork; child execv(PROG); waitpid)
 *   pingpong N REPORT SIZE   N request/reply round trips of SIZE bytes between two
 *                            processes over a Unix stream socketpair
 *   listen - PORTFILE        serve a TCP port (accept, close) and bind a UDP port
 *                            (never read); write "TCP UDP" to PORTFILE; run until killed
 *
 * The program times its own loop (CLOCK_MONOTONIC) and writes the nanoseconds to
 * REPORT, so tools that swallow stdout (frida-trace) still let the script read it, and
 * start-up and exit stay out of the figure. A failing call ends the program with
 * status 1 and a message: a loop that silently failed would look fast.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static long long now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void die(const char *what) {
    perror(what);
    exit(1);
}

static struct sockaddr_in loopback(const char *port) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(port));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    return sa;
}

static void open_loop(long n, const char *path) {
    for (long i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd < 0) die("open");
        close(fd);
    }
}

struct half {
    long n;
    const char *path;
};

static void *open_thread(void *arg) {
    struct half *h = arg;
    open_loop(h->n, h->path);
    return NULL;
}

static void listen_forever(const char *portfile) {
    int tcp = socket(AF_INET, SOCK_STREAM, 0), udp = socket(AF_INET, SOCK_DGRAM, 0);
    if (tcp < 0 || udp < 0) die("socket");
    int one = 1;
    setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in sa = loopback("0");
    socklen_t len = sizeof sa;
    if (bind(tcp, (struct sockaddr *)&sa, sizeof sa) < 0 || listen(tcp, 4096) < 0) die("tcp listen");
    if (getsockname(tcp, (struct sockaddr *)&sa, &len) < 0) die("getsockname");
    int tcp_port = ntohs(sa.sin_port);
    sa = loopback("0");
    if (bind(udp, (struct sockaddr *)&sa, sizeof sa) < 0) die("udp bind");
    len = sizeof sa;
    if (getsockname(udp, (struct sockaddr *)&sa, &len) < 0) die("getsockname");
    char tmp[4096];
    snprintf(tmp, sizeof tmp, "%s.tmp", portfile);
    FILE *f = fopen(tmp, "w");
    if (f == NULL) die(tmp);
    fprintf(f, "%d %d\n", tcp_port, ntohs(sa.sin_port));
    fclose(f);
    if (rename(tmp, portfile) < 0) die("rename");
    for (;;) {
        int c = accept(tcp, NULL, NULL);
        if (c >= 0) close(c);
    }
}

static void pingpong(long n, long size) {
    char buf[4096];
    if (size < 1 || size > (long)sizeof buf) {
        fprintf(stderr, "pingpong: SIZE must be 1..%zu\n", sizeof buf);
        exit(2);
    }
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) die("socketpair");
    pid_t child = fork();
    if (child < 0) die("fork");
    if (child == 0) { /* the echo side: read a whole message, send it back */
        close(sv[0]);
        for (;;) {
            long got = 0;
            while (got < size) {
                ssize_t r = read(sv[1], buf + got, (size_t)(size - got));
                if (r <= 0) _exit(0);
                got += r;
            }
            if (write(sv[1], buf, (size_t)size) != size) _exit(1);
        }
    }
    close(sv[1]);
    memset(buf, 'x', sizeof buf);
    for (long i = 0; i < n; i++) {
        if (write(sv[0], buf, (size_t)size) != size) die("write");
        long got = 0;
        while (got < size) {
            ssize_t r = read(sv[0], buf + got, (size_t)(size - got));
            if (r <= 0) die("read");
            got += r;
        }
    }
    close(sv[0]);
    waitpid(child, NULL, 0);
}

#include <sys/syscall.h>

/* One call of KIND, through libc or raw. */
static void paired_call(const char *kind, int raw, const char *path, int devnull) {
    static const struct sockaddr_in *sa;
    static struct sockaddr_in loop;
    if (!sa) {
        loop = loopback("9");
        sa = &loop;
    }
    if (!strcmp(kind, "open")) {
        int fd = raw ? (int)syscall(SYS_openat, AT_FDCWD, path, O_RDONLY) : open(path, O_RDONLY);
        if (fd < 0) die("open");
        syscall(SYS_close, fd);
    } else if (!strcmp(kind, "write")) {
        if ((raw ? syscall(SYS_write, devnull, "x", 1) : write(devnull, "x", 1)) != 1) die("write");
    } else {
        long r = raw ? syscall(SYS_sendto, -1, "x", 1, 0, sa, sizeof *sa)
                     : sendto(-1, "x", 1, 0, (const struct sockaddr *)sa, sizeof *sa);
        if (r != -1) die("sendto(-1) succeeded");
    }
}

static void paired(const char *kind, long n, const char *report, const char *path) {
    int devnull = open("/dev/null", O_WRONLY);
    if (devnull < 0) die("/dev/null");
    long long spent[2] = {0, 0};
    for (long done = 0; done < n; done += 256) {
        for (int raw = 0; raw < 2; raw++) {
            long long t = now_ns();
            for (long i = done; i < n && i < done + 256; i++) paired_call(kind, raw, path, devnull);
            spent[raw] += now_ns() - t;
        }
    }
    FILE *f = fopen(report, "w");
    if (!f) die(report);
    fprintf(f, "%lld %lld\n", spent[0], spent[1]);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc >= 5 && !strcmp(argv[1], "paired")) {
        paired(argv[2], atol(argv[3]), argv[4], argc > 5 ? argv[5] : "/dev/null");
        return 0;
    }
    if (argc < 4) {
        fprintf(stderr, "usage: workload MODE N REPORT [ARG] (see bench/workload.c)\n");
        return 2;
    }
    const char *mode = argv[1], *report = argv[3], *arg = argc > 4 ? argv[4] : NULL;
    long n = atol(argv[2]);
    if (!strcmp(mode, "listen")) listen_forever(report);

    long long start = now_ns();
    if (!strcmp(mode, "open") && arg) {
        open_loop(n, arg);
    } else if (!strcmp(mode, "openburst") && arg) {
        long long busy = 0;
        for (long done = 0; done < n; done += 400) {
            long long t = now_ns();
            open_loop(n - done < 400 ? n - done : 400, arg);
            busy += now_ns() - t;
            usleep(15000);
        }
        start = now_ns() - busy;
    } else if (!strcmp(mode, "open2t") && arg) {
        struct half h[2] = {{n / 2, arg}, {n - n / 2, arg}};
        pthread_t t;
        if (pthread_create(&t, NULL, open_thread, &h[1]) != 0) die("pthread_create");
        open_thread(&h[0]);
        pthread_join(t, NULL);
    } else if (!strcmp(mode, "write")) {
        int fd = open("/dev/null", O_WRONLY);
        if (fd < 0) die("/dev/null");
        start = now_ns();
        for (long i = 0; i < n; i++)
            if (write(fd, "x", 1) != 1) die("write");
        close(fd);
    } else if (!strcmp(mode, "connect") && arg) {
        struct sockaddr_in sa = loopback(arg);
        struct linger lg = {1, 0}; /* close with RST: no TIME_WAIT, no port exhaustion */
        for (long i = 0; i < n; i++) {
            int s = socket(AF_INET, SOCK_STREAM, 0);
            if (s < 0) die("socket");
            if (connect(s, (struct sockaddr *)&sa, sizeof sa) < 0) die("connect");
            setsockopt(s, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
            close(s);
        }
    } else if (!strcmp(mode, "sendto") && arg) {
        struct sockaddr_in sa = loopback(arg);
        int s = socket(AF_INET, SOCK_DGRAM, 0);
        if (s < 0) die("socket");
        start = now_ns();
        for (long i = 0; i < n; i++)
            if (sendto(s, "0123456789abcdef", 16, 0, (struct sockaddr *)&sa, sizeof sa) != 16) die("sendto");
        close(s);
    } else if (!strcmp(mode, "badsendto")) {
        struct sockaddr_in sa = loopback("9");
        for (long i = 0; i < n; i++)
            if (sendto(-1, "x", 1, 0, (struct sockaddr *)&sa, sizeof sa) != -1) die("sendto(-1) succeeded");
    } else if (!strcmp(mode, "forkexec") && arg) {
        for (long i = 0; i < n; i++) {
            pid_t pid = fork();
            if (pid < 0) die("fork");
            if (pid == 0) {
                char *child_argv[] = {(char *)arg, NULL};
                execv(arg, child_argv);
                _exit(127);
            }
            int status;
            if (waitpid(pid, &status, 0) < 0) die("waitpid");
            if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
                fprintf(stderr, "forkexec: %s failed (status 0x%x)\n", arg, status);
                return 1;
            }
        }
    } else if (!strcmp(mode, "pingpong") && arg) {
        pingpong(n, atol(arg));
    } else {
        fprintf(stderr, "workload: unknown mode %s or missing argument\n", mode);
        return 2;
    }
    long long loop_ns = now_ns() - start;

    FILE *f = fopen(report, "w");
    if (f == NULL) die(report);
    fprintf(f, "%lld\n", loop_ns);
    fclose(f);
    return 0;
}
