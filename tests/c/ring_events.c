// gcc: -D_GNU_SOURCE -pthread
/* ring_events: observed calls for the event-ring tests, one scenario per run.
 *
 *   ring_events opens N PATH              N open+close of PATH
 *   ring_events threads T N PATH          T threads released at once, N open+close each
 *   ring_events exit _exit|kill N PATH    N open+close, then _exit(3) or SIGKILL itself
 *   ring_events fork N PATH               N open+close; fork; child and parent each N more
 *   ring_events vfork N PATH              N open+close; a vfork child opens PATH three
 *                                         times and _exits with how many more
 *                                         descriptors at or above 700 (the broker's) it
 *                                         has than it began with; N more in the parent
 *   ring_events spawn N PATH              N open+close; posix_spawn /bin/true with three
 *                                         addopens of PATH (opened by the child before
 *                                         its exec); N more in the parent
 *   ring_events connect PORT ROUNDS       the main thread opens /dev/null (so has its own
 *                                         connection); then ROUNDS times: a new thread
 *                                         connects to 127.0.0.1:PORT and waits, the main
 *                                         thread sends on that socket
 *   ring_events hold PATH ROUNDS          the same, but each thread opens PATH (the send:
 *                                         ENOTSOCK if run)
 *   ring_events reuse PORT ROUNDS         ROUNDS times: the main thread opens and closes
 *                                         /dev/null; a new thread takes the same number
 *                                         for a socket, connects it to 127.0.0.1:PORT and
 *                                         sends on it itself
 *   ring_events dirs N DIR_A DIR_B        N times: open DIR_A (then DIR_B, in turn) as a
 *                                         directory, openat(it, "f"), close both: the
 *                                         directory's descriptor number is reused each time
 *   ring_events sleep N PATH MARKER MS    N open+close, mkdir MARKER, sleep MS ms
 *   ring_events scribble HOW N PATH       N open+close, then overwrite this thread's ring
 *                                         (HOW: head, length, garbage), N more, exit(7)
 *   ring_events brief HOW N PATH          N times: fork a child that opens PATH once and
 *                                         at once ends its image: HOW is _exit, exec
 *                                         (/bin/true) or exit (the exit flush runs); or
 *                                         a child whose first call is its exec: HOW
 *                                         execonly (/bin/true, no open) or failexec
 *                                         (/nonexistent/program, ENOENT, then the open
 *                                         and exit)
 *
 * Prints "mono START END" (CLOCK_MONOTONIC ns around the opens of the first thread,
 * for modes that open) and one "MODE = RESULT" line.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "steps.h"

extern char **environ;

/* Open descriptors from 700 (where the preload puts the broker's) to 799. */
static int high_fds(void) {
    int n = 0;
    for (int fd = 700; fd < 800; fd++) n += fcntl(fd, F_GETFD) >= 0;
    return n;
}

static uint64_t mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* N open+close of PATH; returns how many opens succeeded. */
static int open_loop(const char *path, int n) {
    int ok = 0;
    for (int i = 0; i < n; i++) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            ok++;
            close(fd);
        }
    }
    return ok;
}

static int timed_open_loop(const char *path, int n) {
    uint64_t start = mono();
    int ok = open_loop(path, n);
    printf("mono %llu %llu\n", (unsigned long long)start, (unsigned long long)mono());
    return ok;
}

/* --- threads ------------------------------------------------------------------- */
static const char *thread_path;
static int thread_n;
static pthread_barrier_t start_line;

static void *opener(void *arg) {
    pthread_barrier_wait(&start_line);
    *(int *)arg = open_loop(thread_path, thread_n);
    return NULL;
}

static int threads(int t, int n, const char *path) {
    pthread_t tids[16];
    int ok[16] = {0};
    if (t < 1 || t > 16) return 2;
    thread_path = path;
    thread_n = n;
    pthread_barrier_init(&start_line, NULL, t);
    for (int i = 0; i < t; i++) pthread_create(&tids[i], NULL, opener, &ok[i]);
    int total = 0;
    for (int i = 0; i < t; i++) {
        pthread_join(tids[i], NULL);
        total += ok[i];
    }
    printf("threads = ok=%d\n", total);
    return 0;
}

/* --- a descriptor made in one thread, used by another ---------------------------- */
/* Each round a new thread makes a descriptor (so a new connection, whose ring it writes
 * into before the broker has read its Hello) and keeps it open and itself alive while
 * the main thread, whose connection the broker already serves, sends on it. */
static int held_fd = -1;
static pthread_mutex_t hold_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t hold_cond = PTHREAD_COND_INITIALIZER;
static int hold_state; /* 1: the descriptor is ready; 2: the main thread is done */

static void hold_signal(int state) {
    pthread_mutex_lock(&hold_lock);
    hold_state = state;
    pthread_cond_broadcast(&hold_cond);
    pthread_mutex_unlock(&hold_lock);
}

static void hold_wait(int state) {
    pthread_mutex_lock(&hold_lock);
    while (hold_state < state) pthread_cond_wait(&hold_cond, &hold_lock);
    pthread_mutex_unlock(&hold_lock);
}

static void *connector(void *arg) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(arg));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0) held_fd = fd;
    hold_signal(1);
    hold_wait(2); /* stay alive (connection and ring open) while main decides */
    return NULL;
}

static void *holder(void *arg) {
    held_fd = open(arg, O_RDONLY);
    hold_signal(1);
    hold_wait(2);
    return NULL;
}

static int held(const char *mode, void *(*body)(void *), char *arg, int rounds) {
    if (open("/dev/null", O_RDONLY) < 0) {
        printf("%s = ERR setup %s\n", mode, errname(errno));
        return 0;
    }
    const char *first = NULL;
    for (int i = 0; i < rounds; i++) {
        pthread_t t;
        held_fd = -1;
        hold_state = 0;
        pthread_create(&t, NULL, body, arg);
        hold_wait(1);
        if (held_fd < 0) {
            printf("%s = ERR setup %s (round %d)\n", mode, errname(errno), i);
            return 0;
        }
        /* The descriptors stay open: numbers are not reused from round to round. */
        ssize_t rc = sendto(held_fd, "x\n", 2, MSG_NOSIGNAL, NULL, 0);
        const char *got = rc >= 0 ? "OK" : errname(errno);
        hold_signal(2);
        pthread_join(t, NULL);
        if (first == NULL) first = got;
        if (strcmp(got, first) != 0) {
            printf("%s = %s in round 0, %s in round %d\n", mode, first, got, i);
            return 0;
        }
    }
    printf("%s = %s (%d rounds)\n", mode, first, rounds);
    return 0;
}

/* Each round one descriptor number is a file in the main thread's ring and then a
 * socket in the worker's, whose lane the broker listed first (it called first): the
 * worker's send is decided after both rings are read, the newer one first. */
static const char *reuse_got;

/* Turns on hold_state: odd, the worker's (main closed its file); even, main's. */
__attribute__((noreturn)) static void *reuser(void *arg) {
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof sa);
    sa.sin_family = AF_INET;
    sa.sin_port = htons((unsigned short)atoi(arg));
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    close(open("/dev/null", O_RDONLY)); /* this thread's connection, before main's */
    for (int turn = 1;; turn += 2) { /* ends when the process exits */
        hold_wait(turn);
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        reuse_got = "ERR setup";
        if (fd >= 0 && connect(fd, (struct sockaddr *)&sa, sizeof sa) == 0)
            reuse_got = sendto(fd, "x\n", 2, MSG_NOSIGNAL, NULL, 0) >= 0 ? "OK" : errname(errno);
        if (fd >= 0) close(fd);
        hold_signal(turn + 1);
    }
}

static int reuse(char *port, int rounds) {
    int ok = 0;
    pthread_t t;
    hold_state = 0;
    pthread_create(&t, NULL, reuser, port);
    usleep(20000); /* the worker's first call, and so its lane, comes first */
    for (int i = 0; i < rounds; i++) {
        close(open("/dev/null", O_RDONLY));
        hold_signal(2 * i + 1);
        hold_wait(2 * i + 2);
        ok += strcmp(reuse_got, "OK") == 0;
    }
    printf("reuse = ok=%d of %d (last: %s)\n", ok, rounds, reuse_got);
    return 0; /* exit ends the worker, waiting for a turn that never comes */
}

/* --- the ring, found by its memfd's name ---------------------------------------- */
/* hermes_wire::ring's layout: a 4096-byte header (head at byte 64, tail at 128), then
 * 128 KiB of records. */
#define RING_HEADER 4096
#define RING_DATA (128 * 1024)

static volatile uint64_t *find_ring(void) {
    FILE *maps = fopen("/proc/self/maps", "r");
    char line[512];
    volatile uint64_t *ring = NULL;
    while (maps && fgets(line, sizeof line, maps)) {
        if (strstr(line, "hermes-ring")) {
            ring = (volatile uint64_t *)(uintptr_t)strtoull(line, NULL, 16);
            break;
        }
    }
    if (maps) fclose(maps);
    return ring;
}

static int scribble(const char *how, int n, const char *path) {
    timed_open_loop(path, n);
    volatile uint64_t *ring = find_ring();
    if (!ring) {
        printf("scribble = ERR no ring mapping\n");
        return 1;
    }
    volatile uint64_t *head = &ring[64 / 8];
    volatile uint64_t *data = &ring[RING_HEADER / 8];
    if (strcmp(how, "head") == 0) {
        *head += (uint64_t)RING_DATA * 5 + 3;
    } else if (strcmp(how, "length") == 0) {
        /* A record of 2^31 bytes, published. */
        uint64_t at = (*head % RING_DATA) / 8;
        data[at] = 1u << 31;
        data[(at + 1) % (RING_DATA / 8)] = 0;
        *head += 16;
    } else {
        uint64_t x = 0x9e3779b97f4a7c15u;
        for (size_t i = 0; i < (RING_HEADER + RING_DATA) / 8; i++) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            ring[i] = x;
        }
    }
    int ok = open_loop(path, n);
    printf("scribble = ok=%d\n", ok);
    exit(7);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *mode = argc > 1 ? argv[1] : "";
    if (strcmp(mode, "opens") == 0 && argc == 4) {
        printf("opens = ok=%d\n", timed_open_loop(argv[3], atoi(argv[2])));
    } else if (strcmp(mode, "threads") == 0 && argc == 5) {
        return threads(atoi(argv[2]), atoi(argv[3]), argv[4]);
    } else if (strcmp(mode, "exit") == 0 && argc == 5) {
        printf("exit = ok=%d\n", timed_open_loop(argv[4], atoi(argv[3])));
        if (strcmp(argv[2], "kill") == 0) kill(getpid(), SIGKILL);
        _exit(3);
    } else if (strcmp(mode, "fork") == 0 && argc == 4) {
        int before = open_loop(argv[3], atoi(argv[2])); /* the parent's ring exists */
        fflush(stdout);
        pid_t child = fork();
        int ok = open_loop(argv[3], atoi(argv[2])) + (child == 0 ? 0 : before);
        if (child == 0) {
            printf("fork child = ok=%d pid=%d\n", ok, getpid());
            exit(0);
        }
        int status = 0;
        waitpid(child, &status, 0);
        printf("fork parent = ok=%d pid=%d child=%d exit=%d\n", ok, getpid(), child, WEXITSTATUS(status));
    } else if (strcmp(mode, "vfork") == 0 && argc == 4) {
        int n = atoi(argv[2]);
        int ok = open_loop(argv[3], n);
        pid_t child = vfork();
        if (child == 0) {
            int before = high_fds();
            for (int i = 0; i < 3; i++)
                if (open(argv[3], O_RDONLY) < 0) _exit(100);
            _exit(high_fds() - before);
        }
        int status = 0;
        waitpid(child, &status, 0);
        ok += open_loop(argv[3], n);
        printf("vfork = ok=%d child=%d exit=%d\n", ok, child, WEXITSTATUS(status));
    } else if (strcmp(mode, "spawn") == 0 && argc == 4) {
        int n = atoi(argv[2]);
        int ok = open_loop(argv[3], n);
        posix_spawn_file_actions_t fa;
        posix_spawn_file_actions_init(&fa);
        for (int fd = 3; fd < 6; fd++) posix_spawn_file_actions_addopen(&fa, fd, argv[3], O_RDONLY, 0);
        pid_t child = 0;
        char *args[] = {"true", NULL};
        int rc = posix_spawn(&child, "/bin/true", &fa, NULL, args, environ);
        int status = 0;
        if (rc == 0) waitpid(child, &status, 0);
        ok += open_loop(argv[3], n);
        printf("spawn = ok=%d rc=%d child=%d exit=%d\n", ok, rc, child, WEXITSTATUS(status));
    } else if (strcmp(mode, "connect") == 0 && argc == 4) {
        return held(mode, connector, argv[2], atoi(argv[3]));
    } else if (strcmp(mode, "reuse") == 0 && argc == 4) {
        return reuse(argv[2], atoi(argv[3]));
    } else if (strcmp(mode, "hold") == 0 && argc == 4) {
        return held(mode, holder, argv[2], atoi(argv[3]));
    } else if (strcmp(mode, "dirs") == 0 && argc == 5) {
        int ok = 0;
        for (int i = 0; i < atoi(argv[2]); i++) {
            int dir = open(argv[3 + i % 2], O_RDONLY | O_DIRECTORY);
            int fd = openat(dir, "f", O_RDONLY);
            ok += fd >= 0;
            close(fd);
            close(dir);
        }
        printf("dirs = ok=%d\n", ok);
    } else if (strcmp(mode, "sleep") == 0 && argc == 6) {
        printf("sleep = ok=%d\n", timed_open_loop(argv[3], atoi(argv[2])));
        mkdir(argv[4], 0755);
        usleep((useconds_t)atoi(argv[5]) * 1000);
    } else if (strcmp(mode, "brief") == 0 && argc == 5) {
        int ok = 0, n = atoi(argv[3]);
        for (int i = 0; i < n; i++) {
            pid_t child = fork();
            if (child == 0) {
                char *args[] = {"true", NULL};
                if (strcmp(argv[2], "execonly") == 0) {
                    execv("/bin/true", args);
                    _exit(2);
                }
                if (strcmp(argv[2], "failexec") == 0) {
                    execv("/nonexistent/program", args);
                    if (errno != ENOENT) _exit(3);
                    exit(open(argv[4], O_RDONLY) < 0); /* the exit flush runs */
                }
                int fd = open(argv[4], O_RDONLY);
                if (fd < 0) _exit(1);
                if (strcmp(argv[2], "exec") == 0) {
                    execv("/bin/true", args);
                    _exit(2);
                }
                if (strcmp(argv[2], "exit") == 0) exit(0);
                _exit(0);
            }
            int status = 0;
            waitpid(child, &status, 0);
            ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
        }
        printf("brief = ok=%d pid=%d\n", ok, getpid());
    } else if (strcmp(mode, "scribble") == 0 && argc == 5) {
        return scribble(argv[2], atoi(argv[3]), argv[4]);
    } else {
        fprintf(stderr, "usage: see the comment at the top of ring_events.c\n");
        return 2;
    }
    return 0;
}
