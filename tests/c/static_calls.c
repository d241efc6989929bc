// gcc: -static -pthread -D_GNU_SOURCE
/* static_calls: a statically linked program (no PT_INTERP, so no preload) that makes
 * one mediated call per step and prints its result; the ptrace fallback's test target.
 *
 *   static_calls STEP [STEP...]     each STEP is OP[:ARG...]
 *
 * open:PATH  openat:DIR:NAME  creat:PATH  rawopenat:PATH (syscall(SYS_openat))
 * openat2:PATH (syscall(SYS_openat2))  write:PATH (O_WRONLY|O_CREAT, writes "written")
 * asmopenat:PATH (openat by an inline syscall instruction; checks rsi survives)
 * connect:IP:PORT (TCP; sends "hello", prints the reply line)
 * sendto:IP:PORT  sendmsg:IP:PORT (UDP "ping")
 * exec|PATH[|ARG...] (fork; the child execve's PATH with argv ARG..., which may hold
 *     colons; the parent prints the child's exit)
 * badptr (open of an unmapped address)  badargv:PATH (execve with an unmapped argv)
 * uring (io_uring_setup)  x32 (getpid with the x32 bit)  int80 (getpid via int $0x80)
 * fork (the rest of the steps run in a child; the parent exits with its status)
 * thread (the rest of the steps run in a new thread; exits with its status)
 * pid (prints "pid = PID")  stopcont (SIGSTOP self; a child sends SIGCONT)
 * exit:N  killself (SIGKILL self)
 *
 * Output, one line per step:  "STEP = OK <detail>"  or  "STEP = ERR <ERRNAME>".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "steps.h"

extern char **environ;

static void report_rc(const char *step, long rc, int err, const char *detail) {
    if (rc < 0)
        printf("%s = ERR %s\n", step, errname(err));
    else
        printf("%s = OK%s%s\n", step, detail ? " " : "", detail ? detail : "");
}

static void inet(const char *ip, const char *port, struct sockaddr_in *sa) {
    memset(sa, 0, sizeof *sa);
    sa->sin_family = AF_INET;
    sa->sin_port = htons((unsigned short)atoi(port));
    inet_pton(AF_INET, ip, &sa->sin_addr);
}

static void tcp(const char *step, char **f) {
    struct sockaddr_in sa;
    inet(f[1], f[2], &sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&sa, sizeof sa) < 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        close(fd);
        return;
    }
    /* The address must survive the call even when it was redirected. */
    if (sa.sin_port != htons((unsigned short)atoi(f[2]))) {
        printf("%s = ERR CLOBBERED\n", step);
        close(fd);
        return;
    }
    char buf[256] = {0};
    if (write(fd, "hello\n", 6) != 6 || read(fd, buf, sizeof buf - 1) <= 0) {
        printf("%s = ERR %s\n", step, errname(errno));
    } else {
        buf[strcspn(buf, "\n")] = 0;
        printf("%s = OK %s\n", step, buf);
    }
    close(fd);
}

static void udp(const char *step, char **f, int use_msg) {
    struct sockaddr_in sa;
    inet(f[1], f[2], &sa);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    ssize_t rc;
    if (use_msg) {
        struct iovec iov = {.iov_base = "ping", .iov_len = 4};
        struct msghdr m = {0};
        m.msg_name = &sa;
        m.msg_namelen = sizeof sa;
        m.msg_iov = &iov;
        m.msg_iovlen = 1;
        rc = sendmsg(fd, &m, 0);
        if (rc >= 0 && m.msg_name != &sa) {
            printf("%s = ERR CLOBBERED\n", step);
            close(fd);
            return;
        }
    } else {
        rc = sendto(fd, "ping", 4, 0, (struct sockaddr *)&sa, sizeof sa);
    }
    char detail[32];
    snprintf(detail, sizeof detail, "%zd", rc);
    report_rc(step, rc, errno, detail);
    close(fd);
}

static void run_exec(const char *step, char *spec) {
    char *f[16];
    int n = 0;
    for (char *p = strtok(spec, "|"); p && n < 15; p = strtok(NULL, "|")) f[n++] = p;
    f[n] = NULL;
    char **argv = f + 1; /* argv[0] is the path itself */
    fflush(stdout);
    pid_t pid = fork();
    if (pid == 0) {
        execve(f[1], argv, environ);
        printf("%s = ERR %s\n", step, errname(errno));
        fflush(stdout);
        _exit(100);
    }
    int status;
    waitpid(pid, &status, 0);
    if (WIFEXITED(status) && WEXITSTATUS(status) == 100) return; /* the child printed */
    printf("%s = OK exit=%d\n", step, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
}

static char proc_state(pid_t pid) {
    char path[64], buf[512] = {0};
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *fp = fopen(path, "r");
    if (!fp) return '?';
    size_t n = fread(buf, 1, sizeof buf - 1, fp);
    fclose(fp);
    buf[n] = 0;
    char *close_paren = strrchr(buf, ')');
    return close_paren && close_paren[1] ? close_paren[2] : '?';
}

static void stopcont(const char *step) {
    pid_t parent = getpid();
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        struct timespec ts = {0, 300 * 1000 * 1000};
        nanosleep(&ts, NULL);
        char state = proc_state(parent);
        kill(parent, SIGCONT);
        _exit(state);
    }
    raise(SIGSTOP);
    int status;
    waitpid(child, &status, 0);
    printf("%s = OK state=%c\n", step, WIFEXITED(status) ? WEXITSTATUS(status) : '?');
}

static int run_steps(int argc, char **argv);

struct rest {
    int argc;
    char **argv;
};

static void *thread_main(void *arg) {
    struct rest *r = arg;
    fflush(stdout);
    exit(run_steps(r->argc, r->argv));
}

/* Runs argv[0..argc) as steps; returns the exit status. */
static int run_steps(int argc, char **argv) {
    for (int i = 0; i < argc; i++) {
        char step[4096], copy[4096];
        snprintf(step, sizeof step, "%s", argv[i]);
        snprintf(copy, sizeof copy, "%s", argv[i]);
        char *f[16];
        split(copy, f, 16);
        const char *op = f[0];
        long rc;
        if (!strcmp(op, "open")) {
            rc = open(f[1], O_RDONLY);
            report_fd(step, rc, errno);
        } else if (!strcmp(op, "openat")) {
            int dfd = open(f[1], O_RDONLY | O_DIRECTORY);
            rc = openat(dfd, f[2], O_RDONLY);
            report_fd(step, rc, errno);
            close(dfd);
        } else if (!strcmp(op, "creat")) {
            rc = creat(f[1], 0644);
            report_rc(step, rc, errno, NULL);
            if (rc >= 0) close((int)rc);
        } else if (!strcmp(op, "write")) {
            rc = open(f[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
            int err = errno;
            if (rc >= 0 && write((int)rc, "written\n", 8) != 8) rc = -1;
            report_rc(step, rc, err, NULL);
            if (rc >= 0) close((int)rc);
        } else if (!strcmp(op, "rawopenat")) {
            rc = syscall(SYS_openat, AT_FDCWD, f[1], O_RDONLY);
            report_fd(step, rc, errno);
        } else if (!strcmp(op, "asmopenat")) {
            /* A bare syscall instruction. The compiler may keep using rsi afterwards,
             * so a redirect must put the program's pointer back. */
            const char *p = f[1];
            long rax = SYS_openat;
            register long r10 __asm__("r10") = 0;
            __asm__ volatile("syscall"
                             : "+a"(rax), "+S"(p)
                             : "D"((long)AT_FDCWD), "d"((long)O_RDONLY), "r"(r10)
                             : "rcx", "r11", "memory");
            if (p != f[1]) {
                printf("%s = ERR CLOBBERED\n", step);
                continue;
            }
            report_fd(step, rax, rax < 0 ? (int)-rax : 0);
        } else if (!strcmp(op, "openat2")) {
            struct {
                unsigned long long flags, mode, resolve;
            } how = {O_RDONLY, 0, 0};
            rc = syscall(SYS_openat2, AT_FDCWD, f[1], &how, sizeof how);
            report_fd(step, rc, errno);
        } else if (!strcmp(op, "connect")) {
            tcp(step, f);
        } else if (!strcmp(op, "sendto")) {
            udp(step, f, 0);
        } else if (!strcmp(op, "sendmsg")) {
            udp(step, f, 1);
        } else if (!strncmp(step, "exec|", 5)) {
            snprintf(copy, sizeof copy, "%s", argv[i]);
            run_exec(step, copy);
        } else if (!strcmp(op, "badptr")) {
            rc = open((const char *)16, O_RDONLY);
            report_rc(step, rc, errno, NULL);
        } else if (!strcmp(op, "badargv")) {
            char **volatile bad = (char **)16;
            rc = execve(f[1], bad, environ);
            report_rc(step, rc, errno, NULL);
        } else if (!strcmp(op, "uring")) {
            char params[120] = {0};
            rc = syscall(SYS_io_uring_setup, 1, params);
            report_rc(step, rc, errno, NULL);
        } else if (!strcmp(op, "x32")) {
            rc = syscall(0x40000000 | SYS_getpid);
            report_rc(step, rc, errno, NULL);
        } else if (!strcmp(op, "int80")) {
            fflush(stdout);
            long ret;
            __asm__ volatile("int $0x80" : "=a"(ret) : "a"(20L) : "memory");
            printf("%s = OK %ld\n", step, ret);
        } else if (!strcmp(op, "fork")) {
            fflush(stdout);
            pid_t pid = fork();
            if (pid > 0) {
                int status;
                waitpid(pid, &status, 0);
                return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
            }
            printf("%s = OK child\n", step);
        } else if (!strcmp(op, "thread")) {
            struct rest r = {argc - i - 1, argv + i + 1};
            pthread_t t;
            printf("%s = OK\n", step);
            pthread_create(&t, NULL, thread_main, &r);
            pthread_join(t, NULL); /* never returns: the thread exits the process */
            return 1;
        } else if (!strcmp(op, "pid")) {
            printf("%s = %d\n", step, (int)getpid());
        } else if (!strcmp(op, "stopcont")) {
            stopcont(step);
        } else if (!strcmp(op, "exit")) {
            fflush(stdout);
            return atoi(f[1]);
        } else if (!strcmp(op, "killself")) {
            fflush(stdout);
            raise(SIGKILL);
        } else {
            printf("%s = BADSTEP\n", step);
        }
    }
    return 0;
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    return run_steps(argc - 1, argv + 1);
}
