// gcc: -D_GNU_SOURCE
/* depth: the calls the policy-depth tests need (caching, rewrites, fault injection,
 * context, state), one step per argument, each printing one result line.
 *
 *   depth STEP [STEP...]     each STEP is OP[:ARG...]
 *
 * FLAGS are letters: r (O_RDONLY), w (O_WRONLY), b (O_RDWR), c (O_CREAT), t (O_TRUNC),
 * a (O_APPEND), e (O_CLOEXEC); the mode is always 0644.
 *
 * open:PATH:FLAGS       open once; "OK" or "ERR ENAME"; a readable fd's first line
 *                       is printed, a writable one gets "new\n" written ("wrote=N" or
 *                       "wrote=ERR ENAME"); closed after
 * loop:N:PATH:FLAGS     open N times, closing each: "ok=K fails=I/ENAME,…" (1-based
 *                       iteration numbers; "-" for none)
 * creat:PATH            creat(PATH, 0644), then write "new\n": "OK wrote=N" or
 *                       "OK wrote=ERR ENAME", or "ERR ENAME"
 * hold:PATH             open read-only and keep it open: "OK fd=N"
 * fopen:PATH:MODE       fopen, fputs "new\n", fflush: "OK put=OK" or "OK put=ERR ENAME"
 * sendto:PORT:TEXT[:N]  UDP TEXT to 127.0.0.1:PORT N times (default 1) from one
 *                       socket: "OK sent=K rc=R" (R: the last call's return)
 * sendmsg:PORT:TEXT     UDP TEXT to 127.0.0.1:PORT by sendmsg, in two iovecs: "OK rc=R"
 * connect:PORT          TCP connect to 127.0.0.1:PORT, kept open: "OK fd=N"
 * tcpsend:TEXT          sendto (no address) TEXT"\n" on the last connect's socket, read
 *                       the answer line: "OK <answer>"
 * fork                  the rest of the steps run in a child; the parent waits, prints
 *                       "fork = OK exit=S" and exits with the child's status
 * pid                   "pid = PID ppid=PPID"
 *
 * Output, one line per step: "STEP = …".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <unistd.h>

#include "steps.h"

static void open_once(const char *step, const char *path, int flags) {
    int fd = open(path, flags, 0644);
    if (fd < 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    char detail[512] = "";
    size_t used = 0;
    int acc = flags & O_ACCMODE;
    if (acc == O_RDONLY || acc == O_RDWR) {
        char buf[256] = {0};
        ssize_t n = read(fd, buf, sizeof buf - 1);
        if (n > 0) buf[strcspn(buf, "\n")] = 0;
        used += snprintf(detail + used, sizeof detail - used, " %s", n >= 0 ? buf : "READERR");
    }
    if (acc == O_WRONLY || acc == O_RDWR) {
        ssize_t n = write(fd, "new\n", 4);
        if (n < 0)
            snprintf(detail + used, sizeof detail - used, " wrote=ERR %s", errname(errno));
        else
            snprintf(detail + used, sizeof detail - used, " wrote=%zd", n);
    }
    printf("%s = OK%s\n", step, detail);
    close(fd);
}

static void open_loop(const char *step, int n, const char *path, int flags) {
    static char fails[65536];
    size_t used = 0;
    int ok = 0;
    fails[0] = 0;
    for (int i = 1; i <= n; i++) {
        int fd = open(path, flags, 0644);
        if (fd >= 0) {
            ok++;
            close(fd);
        } else if (used < sizeof fails - 64) {
            used += snprintf(fails + used, sizeof fails - used, "%s%d/%s", used ? "," : "", i, errname(errno));
        }
    }
    printf("%s = ok=%d fails=%s\n", step, ok, used ? fails : "-");
}

static void fopen_put(const char *step, const char *path, const char *mode) {
    FILE *fp = fopen(path, mode);
    if (!fp) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    errno = 0;
    int bad = fputs("new\n", fp) == EOF || fflush(fp) == EOF;
    int err = errno;
    if (bad)
        printf("%s = OK put=ERR %s\n", step, errname(err));
    else
        printf("%s = OK put=OK\n", step);
    fclose(fp);
}

static void udp_sendto(const char *step, char **f, int nf) {
    struct sockaddr_in sa;
    loopback(f[1], &sa);
    int n = nf > 3 ? atoi(f[3]) : 1;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    int sent = 0;
    ssize_t rc = 0;
    int err = 0;
    for (int i = 0; i < n; i++) {
        rc = sendto(fd, f[2], strlen(f[2]), 0, (struct sockaddr *)&sa, sizeof sa);
        if (rc >= 0) sent++;
        else err = errno;
    }
    if (rc < 0)
        printf("%s = ERR %s sent=%d\n", step, errname(err), sent);
    else
        printf("%s = OK sent=%d rc=%zd\n", step, sent, rc);
    close(fd);
}

static void udp_sendmsg(const char *step, char **f) {
    struct sockaddr_in sa;
    loopback(f[1], &sa);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    size_t len = strlen(f[2]), half = len / 2;
    struct iovec iov[2] = {{.iov_base = f[2], .iov_len = half}, {.iov_base = f[2] + half, .iov_len = len - half}};
    struct msghdr m = {0};
    m.msg_name = &sa;
    m.msg_namelen = sizeof sa;
    m.msg_iov = iov;
    m.msg_iovlen = 2;
    ssize_t rc = sendmsg(fd, &m, 0);
    if (rc < 0)
        printf("%s = ERR %s\n", step, errname(errno));
    else
        printf("%s = OK rc=%zd\n", step, rc);
    close(fd);
}

static int tcp_fd = -1;

static void tcp_connect(const char *step, const char *port) {
    struct sockaddr_in sa;
    loopback(port, &sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        close(fd);
        return;
    }
    tcp_fd = fd;
    printf("%s = OK fd=%d\n", step, fd);
}

static void tcp_send(const char *step, const char *text) {
    char line[1024], buf[1024] = {0};
    int n = snprintf(line, sizeof line, "%s\n", text);
    if (sendto(tcp_fd, line, (size_t)n, 0, NULL, 0) != n) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    ssize_t got = read(tcp_fd, buf, sizeof buf - 1);
    if (got <= 0) {
        printf("%s = ERR %s\n", step, got < 0 ? errname(errno) : "EOF");
        return;
    }
    buf[strcspn(buf, "\n")] = 0;
    printf("%s = OK %s\n", step, buf);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        char step[4096], copy[4096];
        snprintf(step, sizeof step, "%s", argv[i]);
        snprintf(copy, sizeof copy, "%s", argv[i]);
        char *f[16];
        int nf = split(copy, f, 16);
        const char *op = f[0];
        if (!strcmp(op, "open") && nf == 3) {
            open_once(step, f[1], flags_of(f[2]));
        } else if (!strcmp(op, "loop") && nf == 4) {
            open_loop(step, atoi(f[1]), f[2], flags_of(f[3]));
        } else if (!strcmp(op, "creat") && nf == 2) {
            int fd = creat(f[1], 0644);
            if (fd < 0) {
                printf("%s = ERR %s\n", step, errname(errno));
            } else {
                ssize_t n = write(fd, "new\n", 4);
                if (n < 0)
                    printf("%s = OK wrote=ERR %s\n", step, errname(errno));
                else
                    printf("%s = OK wrote=%zd\n", step, n);
                close(fd);
            }
        } else if (!strcmp(op, "hold") && nf == 2) {
            int fd = open(f[1], O_RDONLY);
            if (fd < 0)
                printf("%s = ERR %s\n", step, errname(errno));
            else
                printf("%s = OK fd=%d\n", step, fd);
        } else if (!strcmp(op, "fopen") && nf == 3) {
            fopen_put(step, f[1], f[2]);
        } else if (!strcmp(op, "sendto") && nf >= 3) {
            udp_sendto(step, f, nf);
        } else if (!strcmp(op, "sendmsg") && nf == 3) {
            udp_sendmsg(step, f);
        } else if (!strcmp(op, "connect") && nf == 2) {
            tcp_connect(step, f[1]);
        } else if (!strcmp(op, "tcpsend") && nf == 2) {
            tcp_send(step, f[1]);
        } else if (!strcmp(op, "fork")) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid > 0) {
                int status;
                waitpid(pid, &status, 0);
                int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
                printf("%s = OK exit=%d\n", step, code);
                return code;
            }
        } else if (!strcmp(op, "pid")) {
            printf("%s = %d ppid=%d\n", step, (int)getpid(), (int)getppid());
        } else {
            printf("%s = BADSTEP\n", step);
        }
    }
    return 0;
}
