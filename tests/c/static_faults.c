// gcc: -static -pthread -D_GNU_SOURCE
/* static_faults: a statically linked program (so it runs under the ptrace fallback)
 * that does the hard things to a tracer: many short-lived children at once, a thread
 * blocked inside a mediated call while the process dies or stops, bad pointers in
 * every mediated call, and the side doors (int 0x80, io_uring) aimed at a real file.
 *
 *   static_faults STEP [STEP...]     each STEP is OP[:ARG...]
 *
 * children:N:DIR    fork N children that all exist at once; each creates DIR/pid.PID
 *                   and opens DIR/secret; a child exits 0 when that open failed with
 *                   EACCES. Prints "OK denied=K/N" (K children exited 0).
 * tree:N:DIR        the process and N children each create DIR/pid.PID; child 0 stops
 *                   itself (SIGSTOP), the others open DIR/plain every 20 ms; the parent
 *                   waits for them (forever, unless it is killed).
 * blocked:KIND:DIR:END   a thread blocks inside a mediated call (KIND fifo: open of a
 *                   FIFO with no writer; connect: to a listener whose backlog is full),
 *                   then the main thread ends the process: END is exit (exit_group 7)
 *                   or kill (SIGKILL to itself), or wait (create DIR/pid.PID, then
 *                   wait to be killed from outside). Prints "OK blocked" first.
 * stopwait:DIR      a thread blocks opening a FIFO (no writer yet); the process stops
 *                   itself (SIGSTOP); a child checks it is stopped, sends SIGCONT, then
 *                   opens the FIFO for writing and writes "fifo data". Prints
 *                   "OK state=S data=D" (S: the stopped state the child saw).
 * stopchild         a child stops itself; the parent waits for the stop (WUNTRACED),
 *                   continues it, waits for that (WCONTINUED) and for its exit. Prints
 *                   "OK stopped=STOP continued=1 exit=5".
 * badptrs:PROG      every mediated call with a pointer that cannot be read: one line
 *                   "badptrs/NAME = ERR EFAULT" each (PROG: an executable for execve).
 * int80open:PATH    open(PATH) through int 0x80 (the i386 open), then read it.
 * uringopen:PATH    io_uring_setup, then an IORING_OP_OPENAT of PATH through the ring.
 * untraced:PATH     clone(CLONE_UNTRACED) a child that opens PATH (its exit status
 *                   says how: "OK child-open=OK" or "OK child-open=ERRNAME").
 * notifopen:PATH    a seccomp filter of its own turns openat into a user notification
 *                   that a supervisor thread answers with "continue"; then openat PATH.
 * open:PATH         open and read PATH.
 *
 * Output, one line per step:  "STEP = OK <detail>"  or  "STEP = ERR <ERRNAME>".
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/io_uring.h>
#include <linux/seccomp.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "steps.h"

extern char **environ;

static void sleep_ms(long ms) {
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static void touch_pid(const char *dir) {
    char path[4096];
    snprintf(path, sizeof path, "%s/pid.%d", dir, (int)getpid());
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) close(fd);
}

/* ---- children ---- */

static void children(const char *step, int n, const char *dir) {
    int gate[2];
    if (pipe(gate) != 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    fflush(stdout);
    pid_t *pids = calloc((size_t)n, sizeof *pids);
    int forked = 0;
    for (int i = 0; i < n; i++) {
        pid_t pid = fork();
        if (pid == 0) {
            close(gate[1]);
            char byte;
            /* Blocks until the parent has forked every child and closed the gate. */
            while (read(gate[0], &byte, 1) < 0 && errno == EINTR) {
            }
            touch_pid(dir);
            char path[4096];
            snprintf(path, sizeof path, "%s/secret", dir);
            int fd = open(path, O_RDONLY);
            _exit(fd < 0 && errno == EACCES ? 0 : 1);
        }
        if (pid < 0) break;
        pids[forked++] = pid;
    }
    close(gate[0]);
    close(gate[1]);
    int denied = 0;
    for (int i = 0; i < forked; i++) {
        int status;
        if (waitpid(pids[i], &status, 0) == pids[i] && WIFEXITED(status) && WEXITSTATUS(status) == 0) denied++;
    }
    free(pids);
    printf("%s = OK denied=%d/%d\n", step, denied, n);
}

/* ---- tree ---- */

static void tree(int n, const char *dir) {
    touch_pid(dir);
    char plain[4096];
    snprintf(plain, sizeof plain, "%s/plain", dir);
    fflush(stdout);
    for (int i = 0; i < n; i++) {
        if (fork() == 0) {
            touch_pid(dir);
            if (i == 0) {
                raise(SIGSTOP);
            }
            for (;;) {
                int fd = open(plain, O_RDONLY);
                if (fd >= 0) close(fd);
                sleep_ms(20);
            }
        }
    }
    for (;;) {
        if (wait(NULL) < 0 && errno == ECHILD) break;
    }
}

/* ---- a thread blocked in a mediated call ---- */

struct blocker {
    const char *kind;
    char fifo[4096];
    struct sockaddr_in addr;
    pid_t tid;
    long nr;
    int result, err;
    char data[64];
};

static void *block_main(void *arg) {
    struct blocker *b = arg;
    b->tid = (pid_t)syscall(SYS_gettid);
    if (!strcmp(b->kind, "fifo")) {
        int fd = open(b->fifo, O_RDONLY);
        b->result = fd;
        b->err = errno;
        if (fd >= 0) {
            ssize_t n = read(fd, b->data, sizeof b->data - 1);
            if (n > 0) b->data[n] = 0;
            close(fd);
        }
    } else {
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        b->result = connect(fd, (struct sockaddr *)&b->addr, sizeof b->addr);
        b->err = errno;
    }
    return NULL;
}

/* Whether thread `tid` of this process sleeps inside syscall `nr`. */
static int blocked_in(pid_t tid, long nr) {
    char path[128], buf[512] = {0};
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    char *paren = n > 0 ? strrchr(buf, ')') : NULL;
    if (!paren || paren[1] != ' ' || paren[2] != 'S') return 0;
    snprintf(path, sizeof path, "/proc/self/task/%d/syscall", (int)tid);
    fd = open(path, O_RDONLY);
    if (fd < 0) return 0;
    memset(buf, 0, sizeof buf);
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    return n > 0 && strtol(buf, NULL, 10) == nr;
}

/* A listener on 127.0.0.1 whose accept queue is full: a further connect blocks. */
static int full_listener(struct sockaddr_in *addr) {
    int l = socket(AF_INET, SOCK_STREAM, 0);
    memset(addr, 0, sizeof *addr);
    addr->sin_family = AF_INET;
    addr->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof *addr;
    if (bind(l, (struct sockaddr *)addr, sizeof *addr) != 0 || listen(l, 0) != 0 ||
        getsockname(l, (struct sockaddr *)addr, &len) != 0)
        return -1;
    for (int i = 0; i < 3; i++) {
        int c = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        connect(c, (struct sockaddr *)addr, sizeof *addr);
        sleep_ms(20);
    }
    return l;
}

/* Start a thread that blocks in the call `b->kind` names; wait until it does. */
static int start_blocker(const char *step, struct blocker *b, const char *dir, pthread_t *t) {
    if (!strcmp(b->kind, "fifo")) {
        snprintf(b->fifo, sizeof b->fifo, "%s/fifo.%d", dir, (int)getpid());
        if (mkfifo(b->fifo, 0600) != 0) {
            printf("%s = ERR %s\n", step, errname(errno));
            return -1;
        }
        b->nr = SYS_openat;
    } else if (!strcmp(b->kind, "connect")) {
        if (full_listener(&b->addr) < 0) {
            printf("%s = ERR %s\n", step, errname(errno));
            return -1;
        }
        b->nr = SYS_connect;
    } else {
        printf("%s = BADSTEP\n", step);
        return -1;
    }
    pthread_create(t, NULL, block_main, b);
    for (int i = 0; i < 500; i++) {
        if (b->tid && blocked_in(b->tid, b->nr)) return 0;
        sleep_ms(10);
    }
    printf("%s = ERR TIMEOUT\n", step);
    return -1;
}

static void blocked(const char *step, const char *kind, const char *dir, const char *end) {
    static struct blocker b;
    pthread_t t;
    b.kind = kind;
    if (start_blocker(step, &b, dir, &t) != 0) return;
    printf("%s = OK blocked\n", step);
    fflush(stdout);
    if (!strcmp(end, "kill")) raise(SIGKILL);
    if (!strcmp(end, "wait")) {
        touch_pid(dir);
        for (;;) pause();
    }
    syscall(SYS_exit_group, 7);
}

static char proc_state(pid_t pid) {
    char path[64], buf[512] = {0};
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY);
    if (fd < 0) return '?';
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    char *paren = n > 0 ? strrchr(buf, ')') : NULL;
    return paren && paren[1] ? paren[2] : '?';
}

static void stopwait(const char *step, const char *dir) {
    static struct blocker b;
    pthread_t t;
    b.kind = "fifo";
    if (start_blocker(step, &b, dir, &t) != 0) return;
    pid_t parent = getpid();
    fflush(stdout);
    pid_t child = fork();
    if (child == 0) {
        char state = '?';
        for (int i = 0; i < 200 && state != 't' && state != 'T'; i++) {
            sleep_ms(10);
            state = proc_state(parent);
        }
        kill(parent, SIGCONT);
        int fd = open(b.fifo, O_WRONLY);
        if (fd < 0 || write(fd, "fifo data", 9) != 9) _exit(1);
        close(fd);
        _exit(state);
    }
    raise(SIGSTOP);
    pthread_join(t, NULL);
    int status;
    waitpid(child, &status, 0);
    if (b.result < 0) {
        printf("%s = ERR %s\n", step, errname(b.err));
        return;
    }
    printf("%s = OK state=%c data=%s\n", step, WIFEXITED(status) ? WEXITSTATUS(status) : '?', b.data);
}

/* A child stops itself; its parent must see that stop (waitpid WUNTRACED), continue
 * it, see it continue (WCONTINUED), and reap its exit: job control, as a shell does. */
static void stopchild(const char *step) {
    fflush(stdout);
    /* The child exits only after the parent has seen it continue: an exit before the
     * parent's WCONTINUED wait would be reported instead of the continue. */
    int gate[2];
    if (pipe(gate) != 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    pid_t child = fork();
    if (child == 0) {
        close(gate[1]);
        raise(SIGSTOP);
        char byte;
        while (read(gate[0], &byte, 1) < 0 && errno == EINTR) {
        }
        _exit(5);
    }
    close(gate[0]);
    int status, stopped = 0, continued = 0;
    if (waitpid(child, &status, WUNTRACED) == child && WIFSTOPPED(status)) stopped = WSTOPSIG(status);
    kill(child, SIGCONT);
    if (waitpid(child, &status, WCONTINUED) == child && WIFCONTINUED(status)) continued = 1;
    close(gate[1]);
    if (continued) waitpid(child, &status, 0);
    printf("%s = OK stopped=%s continued=%d exit=%d\n", step, stopped ? sigabbrev_np(stopped) : "no", continued,
           WIFEXITED(status) ? WEXITSTATUS(status) : -1);
}

/* ---- bad pointers ---- */

static void bad(const char *name, long rc) {
    if (rc < 0)
        printf("badptrs/%s = ERR %s\n", name, errname(errno));
    else
        printf("badptrs/%s = OK %ld\n", name, rc);
}

static void badptrs(const char *prog) {
    char *volatile unmapped_at = (char *)16, *volatile null_at = NULL;
    char *unmapped = unmapped_at;
    /* A string that runs off the end of its page into an unmapped one. */
    char *pages = mmap(NULL, 8192, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    munmap(pages + 4096, 4096);
    memset(pages, 'a', 4096);
    char *cross = pages + 4096 - 8;
    bad("open-null", open(null_at, O_RDONLY));
    bad("open-unmapped", open(unmapped, O_RDONLY));
    bad("open-cross-page", open(cross, O_RDONLY));
    bad("openat", openat(AT_FDCWD, unmapped, O_RDONLY));
    bad("creat", creat(unmapped, 0644));
    struct {
        unsigned long long flags, mode, resolve;
    } how = {O_RDONLY, 0, 0};
    bad("openat2-path", syscall(SYS_openat2, AT_FDCWD, unmapped, &how, sizeof how));
    bad("openat2-how", syscall(SYS_openat2, AT_FDCWD, "/", unmapped, sizeof how));

    int tcp = socket(AF_INET, SOCK_STREAM, 0);
    bad("connect-addr", connect(tcp, (struct sockaddr *)unmapped, sizeof(struct sockaddr_in)));
    bad("connect-null", connect(tcp, (struct sockaddr *)null_at, sizeof(struct sockaddr_in)));
    bad("connect-cross-page", connect(tcp, (struct sockaddr *)cross, sizeof(struct sockaddr_in)));
    close(tcp);

    int udp = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons(9)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bad("sendto-addr", sendto(udp, "x", 1, 0, (struct sockaddr *)unmapped, sizeof sa));
    bad("sendto-buf", sendto(udp, unmapped, 1, 0, (struct sockaddr *)&sa, sizeof sa));
    bad("sendmsg-hdr", sendmsg(udp, (struct msghdr *)unmapped, 0));
    struct iovec iov = {.iov_base = "x", .iov_len = 1};
    struct msghdr m = {.msg_name = unmapped, .msg_namelen = sizeof sa, .msg_iov = &iov, .msg_iovlen = 1};
    bad("sendmsg-name", sendmsg(udp, &m, 0));
    m.msg_name = &sa;
    m.msg_iov = (struct iovec *)unmapped;
    bad("sendmsg-iov", sendmsg(udp, &m, 0));
    close(udp);

    char *argv[] = {(char *)prog, NULL};
    char *bad_arg[] = {(char *)prog, unmapped, NULL};
    bad("execve-path", execve(unmapped, argv, environ));
    bad("execve-argv", execve(prog, (char **)unmapped, environ));
    bad("execve-argv1", execve(prog, bad_arg, environ));
    bad("execve-envp", execve(prog, argv, (char **)unmapped));
    bad("execve-env1", execve(prog, argv, bad_arg));
    bad("execveat-path", syscall(SYS_execveat, AT_FDCWD, unmapped, argv, environ, 0));
    munmap(pages, 4096);
}

/* ---- side doors ---- */

static char int80_path[4096]; /* static, non-PIE: below 4 GiB, reachable by i386 calls */

static void int80open(const char *step, const char *path) {
    snprintf(int80_path, sizeof int80_path, "%s", path);
    fflush(stdout);
    long ret;
    /* i386 open (5): ebx path, ecx flags. */
    __asm__ volatile("int $0x80" : "=a"(ret) : "a"(5L), "b"(int80_path), "c"(O_RDONLY) : "memory");
    report_fd(step, ret, ret < 0 ? (int)-ret : 0);
}

static void uringopen(const char *step, const char *path) {
    struct io_uring_params p;
    memset(&p, 0, sizeof p);
    int ring = (int)syscall(SYS_io_uring_setup, 4, &p);
    if (ring < 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    size_t sq_size = p.sq_off.array + p.sq_entries * sizeof(unsigned);
    size_t cq_size = p.cq_off.cqes + p.cq_entries * sizeof(struct io_uring_cqe);
    if (p.features & IORING_FEAT_SINGLE_MMAP) sq_size = cq_size = sq_size > cq_size ? sq_size : cq_size;
    char *sq = mmap(NULL, sq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQ_RING);
    char *cq = (p.features & IORING_FEAT_SINGLE_MMAP)
                   ? sq
                   : mmap(NULL, cq_size, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_CQ_RING);
    struct io_uring_sqe *sqes = mmap(NULL, p.sq_entries * sizeof *sqes, PROT_READ | PROT_WRITE,
                                     MAP_SHARED | MAP_POPULATE, ring, IORING_OFF_SQES);
    if (sq == MAP_FAILED || cq == MAP_FAILED || sqes == MAP_FAILED) {
        printf("%s = ERR MMAP\n", step);
        return;
    }
    unsigned *tail = (unsigned *)(sq + p.sq_off.tail);
    unsigned *mask = (unsigned *)(sq + p.sq_off.ring_mask);
    unsigned *array = (unsigned *)(sq + p.sq_off.array);
    unsigned idx = *tail & *mask;
    memset(&sqes[idx], 0, sizeof sqes[idx]);
    sqes[idx].opcode = IORING_OP_OPENAT;
    sqes[idx].fd = AT_FDCWD;
    sqes[idx].addr = (unsigned long)path;
    sqes[idx].open_flags = O_RDONLY;
    array[idx] = idx;
    __atomic_store_n(tail, *tail + 1, __ATOMIC_RELEASE);
    long rc = syscall(SYS_io_uring_enter, ring, 1, 1, IORING_ENTER_GETEVENTS, NULL, 0);
    if (rc < 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    unsigned head = __atomic_load_n((unsigned *)(cq + p.cq_off.head), __ATOMIC_ACQUIRE);
    struct io_uring_cqe *cqes = (struct io_uring_cqe *)(cq + p.cq_off.cqes);
    int res = cqes[head & *(unsigned *)(cq + p.cq_off.ring_mask)].res;
    report_fd(step, res, res < 0 ? -res : 0);
    close(ring);
}

/* The seccomp user-notification door: a filter of the program's own returns
 * SECCOMP_RET_USER_NOTIF for openat, which outranks the tracer's SECCOMP_RET_TRACE,
 * and a supervisor thread answers "continue": the open would run unmediated. */
static int notif_fd = -1;

static void *notif_supervisor(void *arg) {
    (void)arg;
    /* Wait (bounded) for the listener; without one there is nothing to answer. */
    for (int i = 0; i < 500 && __atomic_load_n(&notif_fd, __ATOMIC_ACQUIRE) == -1; i++) sleep_ms(10);
    if (__atomic_load_n(&notif_fd, __ATOMIC_ACQUIRE) < 0) return NULL;
    struct seccomp_notif req;
    struct seccomp_notif_resp resp;
    memset(&req, 0, sizeof req);
    if (ioctl(notif_fd, SECCOMP_IOCTL_NOTIF_RECV, &req) != 0) return NULL;
    memset(&resp, 0, sizeof resp);
    resp.id = req.id;
    resp.flags = SECCOMP_USER_NOTIF_FLAG_CONTINUE;
    ioctl(notif_fd, SECCOMP_IOCTL_NOTIF_SEND, &resp);
    return NULL;
}

static void notifopen(const char *step, const char *path) {
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_openat, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_USER_NOTIF),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fprog = {.len = sizeof prog / sizeof prog[0], .filter = prog};
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    /* The supervisor thread exists before the filter, so the filter does not bind it. */
    pthread_t t;
    pthread_create(&t, NULL, notif_supervisor, NULL);
    int fd = (int)syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_NEW_LISTENER, &fprog);
    if (fd < 0) {
        int err = errno;
        __atomic_store_n(&notif_fd, -2, __ATOMIC_RELEASE);
        pthread_join(t, NULL);
        printf("%s = ERR %s\n", step, errname(err));
        return;
    }
    __atomic_store_n(&notif_fd, fd, __ATOMIC_RELEASE);
    long rc = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    int err = errno;
    pthread_join(t, NULL);
    report_fd(step, rc, err);
}

/* A child the tracer would not follow: clone with CLONE_UNTRACED. The child opens
 * PATH; its exit status says how that went (0: opened, else the errno). */
static void untraced(const char *step, const char *path) {
    fflush(stdout);
    long pid = syscall(SYS_clone, CLONE_UNTRACED | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0) {
        long fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
        _exit(fd >= 0 ? 0 : errno);
    }
    if (pid < 0) {
        printf("%s = ERR %s\n", step, errname(errno));
        return;
    }
    int status;
    waitpid((pid_t)pid, &status, 0);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
    printf("%s = OK child-open=%s\n", step, code == 0 ? "OK" : errname(code));
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    for (int i = 1; i < argc; i++) {
        char step[4096], copy[4096];
        snprintf(step, sizeof step, "%s", argv[i]);
        snprintf(copy, sizeof copy, "%s", argv[i]);
        char *f[8] = {0};
        int n = 0;
        f[n++] = copy;
        for (char *p = copy; *p && n < 8; p++) {
            if (*p == ':') {
                *p = 0;
                f[n++] = p + 1;
            }
        }
        const char *op = f[0];
        if (!strcmp(op, "children") && n == 3) {
            children(step, atoi(f[1]), f[2]);
        } else if (!strcmp(op, "tree") && n == 3) {
            tree(atoi(f[1]), f[2]);
        } else if (!strcmp(op, "blocked") && n == 4) {
            blocked(step, f[1], f[2], f[3]);
        } else if (!strcmp(op, "stopwait") && n == 2) {
            stopwait(step, f[1]);
        } else if (!strcmp(op, "stopchild")) {
            stopchild(step);
        } else if (!strcmp(op, "badptrs") && n == 2) {
            badptrs(f[1]);
        } else if (!strcmp(op, "int80open") && n == 2) {
            int80open(step, f[1]);
        } else if (!strcmp(op, "untraced") && n == 2) {
            untraced(step, f[1]);
        } else if (!strcmp(op, "notifopen") && n == 2) {
            notifopen(step, f[1]);
        } else if (!strcmp(op, "uringopen") && n == 2) {
            uringopen(step, f[1]);
        } else if (!strcmp(op, "open") && n == 2) {
            long fd = open(f[1], O_RDONLY);
            report_fd(step, fd, errno);
        } else {
            printf("%s = BADSTEP\n", step);
        }
    }
    return 0;
}
