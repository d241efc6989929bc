// gcc: -D_GNU_SOURCE
/* calls: make one hooked libc call per command-line step and print its result.
 *
 *   calls STEP [STEP...]     each STEP is OP:ARG[:ARG...]
 *
 * open:PATH  open64:PATH  openat:DIR:NAME  creat:PATH  open2:PATH (__open_2)
 * openat2f:DIR:NAME (__openat_2)  fopen:PATH:MODE  freopen:PATH
 * open2creat:PATH (__open_2 with O_CREAT and so no mode: glibc aborts the program)
 * write:PATH (open O_WRONLY|O_CREAT|O_TRUNC, writes "written\n")
 * connect:IP:PORT (TCP; sends "hello", prints the reply line)
 * connect6:IP6:PORT  sendto:IP:PORT (UDP "ping")  sendmsg:IP:PORT (UDP "ping")
 * execve:PATH[:ARG...]  execv:PATH  execvp:FILE[:ARG...]  execvpe:FILE
 * spawn:PATH[:ARG...] (posix_spawn)  spawnp:FILE[:ARG...] (posix_spawnp)
 * ids (prints the real and effective user ids)
 * fexecve|PATH[|ARG...] (open PATH O_CLOEXEC, fexecve it)  execveat|DIR|NAME[|ARG...]
 * A step whose first separator is '|' splits on '|' (any exec or spawn step may), so
 * that an ARG may be a step of the exec'd program's own: spawnp|FILE|open:PATH.
 * For the exec steps the program forks first; the child execs, the parent waits.
 *
 * Output, one line per step:  "STEP = OK <detail>"  or  "STEP = ERR <ERRNAME>".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;
int __open_2(const char *path, int flags);
int __openat_2(int dirfd, const char *path, int flags);

static const char *errname(int e) {
    switch (e) {
    case EPERM: return "EPERM";
    case ENOENT: return "ENOENT";
    case EACCES: return "EACCES";
    case EEXIST: return "EEXIST";
    case ENOTDIR: return "ENOTDIR";
    case EISDIR: return "EISDIR";
    case EROFS: return "EROFS";
    case EIO: return "EIO";
    case ENOSPC: return "ENOSPC";
    case ECONNREFUSED: return "ECONNREFUSED";
    case ENETUNREACH: return "ENETUNREACH";
    case EHOSTUNREACH: return "EHOSTUNREACH";
    case ETIMEDOUT: return "ETIMEDOUT";
    case EAFNOSUPPORT: return "EAFNOSUPPORT";
    case EADDRNOTAVAIL: return "EADDRNOTAVAIL";
    default: {
        static char buf[32];
        snprintf(buf, sizeof buf, "E%d", e);
        return buf;
    }
    }
}

static void report_fd(const char *step, int fd) {
    if (fd < 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    char buf[256] = {0};
    ssize_t n = read(fd, buf, sizeof buf - 1);
    if (n > 0) {
        buf[strcspn(buf, "\n")] = 0;
        printf("%s = OK %s\n", step, buf);
    } else {
        printf("%s = OK\n", step);
    }
    close(fd);
}

static void report_rc(const char *step, long rc, const char *detail) {
    if (rc < 0)
        printf("%s = ERR %s\n", step, errname(errno));
    else
        printf("%s = OK%s%s\n", step, detail ? " " : "", detail ? detail : "");
}

static int inet_addr_of(const char *ip, const char *port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)atoi(port));
    return inet_pton(AF_INET, ip, &sa->sin_addr) == 1 ? 0 : -1;
}

/* Split "a:b:c" in place into at most max fields; returns the count. */
static int split_on(char *s, char **out, int max, char sep) {
    int n = 0;
    while (n < max) {
        out[n++] = s;
        char *c = strchr(s, sep);
        if (!c) break;
        *c = 0;
        s = c + 1;
    }
    return n;
}

static void tcp(const char *step, char **f, int n, int v6) {
    if (n < 3) { printf("%s = BADSTEP\n", step); return; }
    int fd = socket(v6 ? AF_INET6 : AF_INET, SOCK_STREAM, 0);
    int rc;
    if (v6) {
        struct sockaddr_in6 sa;
        memset(&sa, 0, sizeof sa);
        sa.sin6_family = AF_INET6;
        sa.sin6_port = htons((unsigned short)atoi(f[n - 1]));
        /* an IPv6 literal contains ':' — rejoin all fields but the last */
        char ip[128] = {0};
        for (int i = 1; i < n - 1; i++) {
            if (i > 1) strcat(ip, ":");
            strncat(ip, f[i], sizeof ip - strlen(ip) - 2);
        }
        inet_pton(AF_INET6, ip, &sa.sin6_addr);
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    } else {
        struct sockaddr_in sa;
        inet_addr_of(f[1], f[2], &sa);
        rc = connect(fd, (struct sockaddr *)&sa, sizeof sa);
    }
    if (rc < 0) {
        report_rc(step, rc, NULL);
        close(fd);
        return;
    }
    const char *msg = "hello\n";
    if (write(fd, msg, strlen(msg)) < 0) { report_rc(step, -1, NULL); close(fd); return; }
    char buf[256] = {0};
    ssize_t got = read(fd, buf, sizeof buf - 1);
    if (got > 0) buf[strcspn(buf, "\n")] = 0;
    report_rc(step, 0, buf);
    close(fd);
}

static void udp(const char *step, char **f, int n, int use_msg) {
    if (n < 3) { printf("%s = BADSTEP\n", step); return; }
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa;
    inet_addr_of(f[1], f[2], &sa);
    ssize_t rc;
    if (use_msg) {
        struct iovec iov = { .iov_base = "ping", .iov_len = 4 };
        struct msghdr m;
        memset(&m, 0, sizeof m);
        m.msg_name = &sa;
        m.msg_namelen = sizeof sa;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        rc = sendmsg(fd, &m, 0);
    } else {
        rc = sendto(fd, "ping", 4, 0, (struct sockaddr *)&sa, sizeof sa);
    }
    char detail[32];
    snprintf(detail, sizeof detail, "%zd", rc);
    report_rc(step, rc, detail);
    close(fd);
}

/* Fork; the child runs `exec_fn` and reports failure with exit 100+errno%100. */
static void run_exec(const char *step, char **f, int n) {
    const char *op = f[0];
    /* argv: from PATH on (execveat: from NAME on, after DIR) */
    char *argv[16];
    int argc = 0;
    for (int i = !strcmp(op, "execveat") ? 2 : 1; i < n && argc < 15; i++) argv[argc++] = f[i];
    argv[argc] = NULL;
    fflush(stdout);
    if (!strcmp(op, "spawn") || !strcmp(op, "spawnp")) {
        pid_t pid;
        int rc = !strcmp(op, "spawn") ? posix_spawn(&pid, f[1], NULL, NULL, argv, environ)
                                      : posix_spawnp(&pid, f[1], NULL, NULL, argv, environ);
        if (rc != 0) { printf("%s = ERR %s\n", step, errname(rc)); return; }
        int status;
        waitpid(pid, &status, 0);
        printf("%s = OK exit=%d\n", step, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
        return;
    }
    pid_t pid = fork();
    if (pid == 0) {
        if (!strcmp(op, "execve")) execve(f[1], argv, environ);
        else if (!strcmp(op, "execv")) execv(f[1], argv);
        else if (!strcmp(op, "execvp")) execvp(f[1], argv);
        else if (!strcmp(op, "execvpe")) execvpe(f[1], argv, environ);
        else if (!strcmp(op, "fexecve")) {
            int fd = open(f[1], O_RDONLY | O_CLOEXEC);
            if (fd >= 0) fexecve(fd, argv, environ);
        } else if (!strcmp(op, "execveat")) {
            int dfd = open(f[1], O_RDONLY | O_DIRECTORY | O_CLOEXEC);
            if (dfd >= 0) execveat(dfd, f[2], argv, environ, 0);
        }
        printf("%s = ERR %s\n", step, errname(errno));
        fflush(stdout);
        _exit(100);
    }
    int status;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 100) return; /* child printed */
    printf("%s = OK exit=%d\n", step, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        char step[4096];
        snprintf(step, sizeof step, "%s", argv[i]);
        char copy[4096];
        snprintf(copy, sizeof copy, "%s", argv[i]);
        char *f[16];
        int by_bar = copy[strcspn(copy, ":|")] == '|';
        int n = split_on(copy, f, 16, by_bar ? '|' : ':');
        const char *op = f[0];
        if (!strcmp(op, "open")) report_fd(step, open(f[1], O_RDONLY));
        else if (!strcmp(op, "open64")) report_fd(step, open64(f[1], O_RDONLY));
        else if (!strcmp(op, "open2")) report_fd(step, __open_2(f[1], O_RDONLY));
        else if (!strcmp(op, "open2creat")) report_fd(step, __open_2(f[1], O_WRONLY | O_CREAT));
        else if (!strcmp(op, "openat") || !strcmp(op, "openat2f")) {
            int dfd = open(f[1], O_RDONLY | O_DIRECTORY);
            int fd = !strcmp(op, "openat") ? openat(dfd, f[2], O_RDONLY) : __openat_2(dfd, f[2], O_RDONLY);
            report_fd(step, fd);
            close(dfd);
        } else if (!strcmp(op, "creat")) report_rc(step, creat(f[1], 0644), NULL);
        else if (!strcmp(op, "write")) {
            int fd = open(f[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
            if (fd >= 0 && write(fd, "written\n", 8) != 8) fd = -1;
            report_rc(step, fd, NULL);
            if (fd >= 0) close(fd);
        } else if (!strcmp(op, "fopen") || !strcmp(op, "freopen")) {
            FILE *fp = !strcmp(op, "fopen") ? fopen(f[1], n > 2 ? f[2] : "r") : freopen(f[1], "r", tmpfile());
            if (!fp) { printf("%s = ERR %s\n", step, errname(errno)); continue; }
            char buf[256] = {0};
            if (fgets(buf, sizeof buf, fp)) buf[strcspn(buf, "\n")] = 0;
            printf("%s = OK %s\n", step, buf);
            fclose(fp);
        } else if (!strcmp(op, "connect")) tcp(step, f, n, 0);
        else if (!strcmp(op, "connect6")) tcp(step, f, n, 1);
        else if (!strcmp(op, "sendto")) udp(step, f, n, 0);
        else if (!strcmp(op, "sendmsg")) udp(step, f, n, 1);
        else if (!strcmp(op, "ids")) printf("%s = OK uid=%d euid=%d\n", step, (int)getuid(), (int)geteuid());
        else if (!strncmp(op, "exec", 4) || !strncmp(op, "spawn", 5) || !strcmp(op, "fexecve")) run_exec(step, f, n);
        else printf("%s = BADSTEP\n", step);
    }
    return 0;
}
