// gcc: -D_GNU_SOURCE
/* vfork_exec: exec through vfork() children, then keep making calls in the parent.
 *
 *   vfork_exec ALLOWED DENIED
 *
 * 1. open ALLOWED (the parent's broker connection exists from here on);
 * 2. vfork; the child execve()s /bin/echo from-vfork-child (allowed by the test policy);
 * 3. vfork; the child execve()s /bin/false (denied by the test policy) and _exits with
 *    the errno it got;
 * 4. open ALLOWED and DENIED again, twice.
 *
 * Output: "before ALLOWED = OK|ERR E", "echo-child exit=N", "false-child exit=N"
 * (N is the errno when the exec failed), "after ALLOWED = …", "after DENIED = …".
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

extern char **environ;

static void try_open(const char *label, const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) {
        printf("%s %s = ERR %d\n", label, path, errno);
    } else {
        printf("%s %s = OK\n", label, path);
        close(fd);
    }
}

static int vfork_exec(const char *path, char *const argv[]) {
    fflush(stdout);
    pid_t pid = vfork();
    if (pid == 0) {
        execve(path, argv, environ);
        _exit(errno);
    }
    if (pid < 0) return -1;
    int status;
    waitpid(pid, &status, 0);
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc != 3) {
        fprintf(stderr, "usage: vfork_exec ALLOWED DENIED\n");
        return 2;
    }
    try_open("before", argv[1]);
    try_open("before", argv[2]);
    char *echo_argv[] = {"echo", "from-vfork-child", NULL};
    printf("echo-child exit=%d\n", vfork_exec("/bin/echo", echo_argv));
    char *false_argv[] = {"false", NULL};
    printf("false-child exit=%d\n", vfork_exec("/bin/false", false_argv));
    for (int i = 0; i < 2; i++) {
        try_open("after", argv[1]);
        try_open("after", argv[2]);
    }
    return 0;
}
