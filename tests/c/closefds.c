// gcc: -D_GNU_SOURCE
/* closefds: close or overwrite every descriptor the preload might be using, and keep
 * opening files.
 *
 *   closefds ALLOWED DENIED
 *
 * Rounds of "open ALLOWED, open DENIED":
 *   start          before anything is closed;
 *   close_range    after close_range(3, ~0U, 0);
 *   dup2           after ALLOWED is dup2()ed over fds 700..710;
 *   closefrom      after closefrom(3);
 *   raw            after close_range(3, ~0U, 0) made with syscall(2), which the
 *                  preload cannot see (programs built before glibc had the wrapper).
 * Output per open: "ROUND allowed = OK|ERR <errno>", "ROUND denied = OK|ERR <errno>".
 * After the dup2 round the program reads each of fds 700..710 from offset 0 and
 * prints "fd N = <first line>" (it must still be ALLOWED's content).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <unistd.h>

static const char *allowed, *denied;

static void round_(const char *label) {
    for (int i = 0; i < 2; i++) {
        int fd = open(i == 0 ? allowed : denied, O_RDONLY);
        if (fd < 0) {
            printf("%s %s = ERR %d\n", label, i == 0 ? "allowed" : "denied", errno);
        } else {
            printf("%s %s = OK\n", label, i == 0 ? "allowed" : "denied");
            close(fd);
        }
    }
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: closefds ALLOWED DENIED\n");
        return 2;
    }
    allowed = argv[1];
    denied = argv[2];
    round_("start");
    if (close_range(3, ~0U, 0) != 0) printf("close_range = ERR %d\n", errno);
    round_("close_range");
    int f = open(allowed, O_RDONLY);
    for (int fd = 700; fd <= 710; fd++)
        if (dup2(f, fd) != fd) printf("dup2 %d = ERR %d\n", fd, errno);
    close(f);
    round_("dup2");
    for (int fd = 700; fd <= 710; fd++) {
        char buf[128] = {0};
        ssize_t n = pread(fd, buf, sizeof buf - 1, 0);
        if (n < 0) {
            printf("fd %d = ERR %d\n", fd, errno);
            continue;
        }
        buf[strcspn(buf, "\n")] = 0;
        printf("fd %d = %s\n", fd, buf);
    }
    closefrom(3);
    round_("closefrom");
    if (syscall(SYS_close_range, 3, ~0U, 0) != 0) printf("raw close_range = ERR %d\n", errno);
    round_("raw");
    return 0;
}
