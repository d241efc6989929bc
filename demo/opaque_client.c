/*
 * opaque_client: the program HERMES mediates in demo/run.sh. It knows nothing
 * about HERMES; it just makes libc calls and prints what happened, one line per
 * step. Run from the repository root:  opaque_client PORT
 * (PORT: a TCP listener on 127.0.0.1, see demo/listener.c).
 */
#define _POSIX_C_SOURCE 200809L
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define CONNECT_TIMEOUT_MS 3000

static void failed(const char *what, int err)
{
    printf("[client] %s -> FAILED: %s\n", what, strerror(err));
}

/* Print "ok (N bytes): <first line of buf>". */
static void ok_first_line(const char *what, const char *buf, size_t n)
{
    size_t len = strcspn(buf, "\n");
    printf("[client] %s -> ok (%zu bytes): %.*s\n", what, n, (int)len, buf);
}

static struct sockaddr_in inet_addr_port(const char *ip, int port)
{
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)port);
    inet_pton(AF_INET, ip, &sa.sin_addr);
    return sa;
}

/* connect(2) with a timeout, so that running without HERMES cannot hang on an
 * unroutable address. Returns 0, or -1 with errno set. */
static int connect_timeout(int fd, const struct sockaddr_in *sa)
{
    int fl = fcntl(fd, F_GETFL);
    fcntl(fd, F_SETFL, fl | O_NONBLOCK);
    int rc = connect(fd, (const struct sockaddr *)sa, sizeof *sa);
    if (rc < 0 && errno == EINPROGRESS) {
        struct pollfd p = { .fd = fd, .events = POLLOUT };
        rc = poll(&p, 1, CONNECT_TIMEOUT_MS);
        if (rc == 0) {
            errno = ETIMEDOUT;
            rc = -1;
        } else if (rc > 0) {
            int err = 0;
            socklen_t len = sizeof err;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len);
            errno = err;
            rc = err ? -1 : 0;
        }
    }
    int saved = errno;
    fcntl(fd, F_SETFL, fl);
    errno = saved;
    return rc;
}

/* a. open(2) + read */
static void step_open_read(const char *path)
{
    char what[256], buf[512];
    snprintf(what, sizeof what, "open %s", path);
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        failed(what, errno);
        return;
    }
    ssize_t n = read(fd, buf, sizeof buf - 1);
    int err = errno;
    close(fd);
    if (n < 0) {
        failed(what, err);
        return;
    }
    buf[n] = '\0';
    ok_first_line(what, buf, (size_t)n);
}

/* b, c. fopen + fgets; returns 0 on success */
static int step_fopen_read(const char *path)
{
    char what[256], buf[512];
    snprintf(what, sizeof what, "fopen %s", path);
    FILE *f = fopen(path, "r");
    if (!f) {
        failed(what, errno);
        return -1;
    }
    if (!fgets(buf, sizeof buf, f))
        buf[0] = '\0';
    fclose(f);
    ok_first_line(what, buf, strlen(buf));
    return 0;
}

/* d. open for writing */
static void step_open_write(const char *path)
{
    static const char line[] = "written by opaque_client\n";
    char what[256];
    snprintf(what, sizeof what, "open %s for writing", path);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) {
        failed(what, errno);
        return;
    }
    ssize_t n = write(fd, line, sizeof line - 1);
    int err = errno;
    close(fd);
    if (n < 0)
        failed(what, err);
    else
        printf("[client] %s -> ok (%zd bytes written)\n", what, n);
}

/* e, f. TCP connect; if it works, send "hello\n" and print the reply */
static void step_tcp(const char *ip, int port)
{
    char what[256], buf[512];
    snprintf(what, sizeof what, "connect tcp %s:%d", ip, port);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) {
        failed(what, errno);
        return;
    }
    struct sockaddr_in sa = inet_addr_port(ip, port);
    if (connect_timeout(fd, &sa) < 0) {
        failed(what, errno);
        close(fd);
        return;
    }
    struct timeval tv = { .tv_sec = 5, .tv_usec = 0 };
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    ssize_t n = -1;
    if (send(fd, "hello\n", 6, 0) == 6)
        n = recv(fd, buf, sizeof buf - 1, 0);
    int err = errno;
    close(fd);
    if (n < 0) {
        failed(what, err);
        return;
    }
    buf[n] = '\0';
    printf("[client] %s -> ok, reply: %.*s\n", what, (int)strcspn(buf, "\n"), buf);
}

/* g. UDP sendto */
static void step_udp(const char *ip, int port)
{
    char what[256];
    snprintf(what, sizeof what, "sendto udp %s:%d", ip, port);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (fd < 0) {
        failed(what, errno);
        return;
    }
    struct sockaddr_in sa = inet_addr_port(ip, port);
    ssize_t n = sendto(fd, "ping", 4, 0, (const struct sockaddr *)&sa, sizeof sa);
    int err = errno;
    close(fd);
    if (n < 0)
        failed(what, err);
    else
        printf("[client] sendto udp %s:%d -> ok (%zd bytes)\n", ip, port, n);
}

/* h. fork + execvp + wait; the child reports its own exec failure */
static void step_exec(const char *file, char *const argv[])
{
    char what[256];
    snprintf(what, sizeof what, "exec %s", file);
    for (int i = 1; argv[i]; i++) {
        strncat(what, " ", sizeof what - strlen(what) - 1);
        strncat(what, argv[i], sizeof what - strlen(what) - 1);
    }
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        failed(what, errno);
        return;
    }
    if (pid == 0) {
        execvp(file, argv);
        failed(what, errno);
        fflush(stdout);
        _exit(1);
    }
    int status;
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR) {
            failed(what, errno);
            return;
        }
    }
    if (WIFEXITED(status))
        printf("[client] %s -> exited %d\n", what, WEXITSTATUS(status));
    else if (WIFSIGNALED(status))
        printf("[client] %s -> killed by signal %d\n", what, WTERMSIG(status));
}

int main(int argc, char **argv)
{
    if (argc != 2 || atoi(argv[1]) <= 0 || atoi(argv[1]) >= 65535) {
        fprintf(stderr, "usage: %s PORT\n", argv[0]);
        return 2;
    }
    int port = atoi(argv[1]);
    setvbuf(stdout, NULL, _IOLBF, 0);

    step_open_read("demo/data/config.ini");
    step_fopen_read("demo/data/secret.txt");
    if (step_fopen_read("/etc/hostname") < 0)
        step_fopen_read("/etc/os-release");
    step_open_write("/tmp/hermes-demo-out.txt");
    step_tcp("127.0.0.1", port + 1);
    step_tcp("10.255.255.1", 80);
    step_udp("127.0.0.1", port);
    step_udp("8.8.8.8", 53);

    char *uname_argv[] = { "uname", "-s", NULL };
    step_exec("uname", uname_argv);
    char *sh_argv[] = { "sh", "-c", "echo should not run", NULL };
    step_exec("/bin/sh", sh_argv);
    return 0;
}
