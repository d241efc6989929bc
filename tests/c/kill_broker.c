// gcc: -D_GNU_SOURCE
/* kill_broker: open PATH, SIGKILL the run's broker (its pid is in HERMES_BOARD,
 * "/proc/PID/fd/N"), wait until it is dead, open PATH N more times, exit with EXIT.
 *
 *   kill_broker EXIT N PATH
 *
 * Output, one line per open:  "before = OK" / "after = ERR <errno>" and so on.
 */
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

static void try_open(const char *when, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("%s = ERR %s\n", when, errno == EPERM ? "EPERM" : strerror(errno));
    } else {
        printf("%s = OK\n", when);
        close(fd);
    }
}

/* Whether PID is gone or a zombie (dead, not yet reaped by whoever adopted it). Read
 * with a raw system call: the check itself is not for the policy to see. */
static int dead(int pid) {
    char path[64], stat[512] = {0};
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    int fd = syscall(SYS_openat, AT_FDCWD, path, O_RDONLY);
    if (fd < 0) return 1;
    ssize_t n = read(fd, stat, sizeof stat - 1);
    close(fd);
    char *end = n > 0 ? strrchr(stat, ')') : NULL;
    return end && (end[2] == 'Z' || end[2] == 'X');
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *board = getenv("HERMES_BOARD");
    int broker = 0;
    if (argc != 4 || !board || sscanf(board, "/proc/%d/", &broker) != 1) {
        fprintf(stderr, "usage: kill_broker EXIT N PATH (under hermes launch)\n");
        return 2;
    }
    try_open("before", argv[3]);
    if (kill(broker, SIGKILL) != 0) {
        perror("kill_broker: kill");
        return 2;
    }
    for (int i = 0; i < 2000 && !dead(broker); i++) usleep(1000);
    if (!dead(broker)) {
        fprintf(stderr, "kill_broker: the broker (pid %d) is still alive\n", broker);
        return 2;
    }
    for (int i = 0; i < atoi(argv[2]); i++) try_open("after", argv[3]);
    return atoi(argv[1]);
}
