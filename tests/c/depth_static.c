// gcc: -static -D_GNU_SOURCE
/* depth_static: a statically linked program (so it runs under the seccomp + ptrace
 * fallback) making the calls the policy-depth tests rewrite and inspect there.
 *
 *   depth_static STEP [STEP...]     each STEP is OP[:ARG...]
 *
 * open:PATH:FLAGS     FLAGS as in depth.c (r w b c t a e), mode 0644; "OK", a readable
 *                     fd's first line, a writable one's "wrote=N" or "wrote=ERR ENAME"
 * openat2:PATH:FLAGS  the same through syscall(SYS_openat2)
 * creat:PATH          creat(PATH, 0644): "OK" or "ERR ENAME"
 * sendto:PORT:TEXT    UDP TEXT to 127.0.0.1:PORT: "OK rc=R"
 * sendmsg:PORT:TEXT   the same by sendmsg, in two iovecs
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
#include <sys/syscall.h>
#include <unistd.h>

#include "steps.h"

static void report_open(const char *step, long fd, int err, int flags) {
    if (fd < 0) {
        printf("%s = ERR %s\n", step, errname(err));
        return;
    }
    char detail[512] = "";
    size_t used = 0;
    int acc = flags & O_ACCMODE;
    if (acc == O_RDONLY || acc == O_RDWR) {
        char buf[256] = {0};
        ssize_t n = read((int)fd, buf, sizeof buf - 1);
        if (n > 0) buf[strcspn(buf, "\n")] = 0;
        used += snprintf(detail + used, sizeof detail - used, " %s", n >= 0 ? buf : "READERR");
    }
    if (acc == O_WRONLY || acc == O_RDWR) {
        ssize_t n = write((int)fd, "new\n", 4);
        if (n < 0)
            snprintf(detail + used, sizeof detail - used, " wrote=ERR %s", errname(errno));
        else
            snprintf(detail + used, sizeof detail - used, " wrote=%zd", n);
    }
    printf("%s = OK%s\n", step, detail);
    close((int)fd);
}

static void udp(const char *step, char **f, int use_msg) {
    struct sockaddr_in sa;
    loopback(f[1], &sa);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    ssize_t rc;
    if (use_msg) {
        size_t len = strlen(f[2]), half = len / 2;
        struct iovec iov[2] = {{.iov_base = f[2], .iov_len = half}, {.iov_base = f[2] + half, .iov_len = len - half}};
        struct msghdr m = {0};
        m.msg_name = &sa;
        m.msg_namelen = sizeof sa;
        m.msg_iov = iov;
        m.msg_iovlen = 2;
        rc = sendmsg(fd, &m, 0);
    } else {
        rc = sendto(fd, f[2], strlen(f[2]), 0, (struct sockaddr *)&sa, sizeof sa);
    }
    if (rc < 0)
        printf("%s = ERR %s\n", step, errname(errno));
    else
        printf("%s = OK rc=%zd\n", step, rc);
    close(fd);
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
            int flags = flags_of(f[2]);
            long fd = open(f[1], flags, 0644);
            report_open(step, fd, errno, flags);
        } else if (!strcmp(op, "openat2") && nf == 3) {
            int flags = flags_of(f[2]);
            struct {
                unsigned long long flags, mode, resolve;
            } how = {(unsigned long long)flags, (flags & O_CREAT) ? 0644 : 0, 0};
            long fd = syscall(SYS_openat2, AT_FDCWD, f[1], &how, sizeof how);
            report_open(step, fd, errno, flags);
        } else if (!strcmp(op, "creat") && nf == 2) {
            long fd = creat(f[1], 0644);
            if (fd < 0)
                printf("%s = ERR %s\n", step, errname(errno));
            else {
                printf("%s = OK\n", step);
                close((int)fd);
            }
        } else if (!strcmp(op, "sendto") && nf == 3) {
            udp(step, f, 0);
        } else if (!strcmp(op, "sendmsg") && nf == 3) {
            udp(step, f, 1);
        } else {
            printf("%s = BADSTEP\n", step);
        }
    }
    return 0;
}
