/* forks: fork NCHILDREN children at once; each opens ALLOWED (must succeed) and DENIED
 * (must fail with EACCES) and reports through its exit status: 0 when both were
 * right, bit 1 set when the allowed open failed, bit 2 when the denied one did not
 * fail with EACCES.
 *
 *   forks ALLOWED DENIED
 *
 * Prints "children=N right=N wrong=N", and one "child PID status=S" line per wrong one.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#define NCHILDREN 200

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: forks ALLOWED DENIED\n");
        return 2;
    }
    /* The parent's own connection exists before the forks: children must not use it. */
    int fd = open(argv[1], O_RDONLY);
    if (fd >= 0) close(fd);
    pid_t pids[NCHILDREN];
    int started = 0;
    for (int i = 0; i < NCHILDREN; i++) {
        pid_t pid = fork();
        if (pid < 0) break;
        if (pid == 0) {
            int bad = 0;
            int a = open(argv[1], O_RDONLY);
            if (a < 0) bad |= 1;
            int d = open(argv[2], O_RDONLY);
            if (d >= 0 || errno != EACCES) bad |= 2;
            _exit(bad);
        }
        pids[started++] = pid;
    }
    int right = 0, wrong = 0;
    for (int i = 0; i < started; i++) {
        int status;
        waitpid(pids[i], &status, 0);
        if (WIFEXITED(status) && WEXITSTATUS(status) == 0) {
            right++;
        } else {
            wrong++;
            printf("child %d status=%d\n", pids[i], status);
        }
    }
    printf("children=%d right=%d wrong=%d\n", started, right, wrong);
    return 0;
}
