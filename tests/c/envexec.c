// gcc: -D_GNU_SOURCE
/* envexec: exec a program with a scrubbed environment, in a forked child.
 *
 *   envexec MODE PROG [ARG...]
 *
 * MODE clearenv: the parent calls clearenv(), then the child execv()s PROG.
 * MODE emptyenv: the child execve()s PROG with an environment of no entries.
 * MODE nullenv:  the child execve()s PROG with a NULL environment pointer.
 *
 * Prints "MODE exit=N" with the child's exit status (128+signal if killed), or
 * "MODE = ERR <errno>" when the exec itself failed.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);
    if (argc < 3) {
        fprintf(stderr, "usage: envexec MODE PROG [ARG...]\n");
        return 2;
    }
    const char *mode = argv[1];
    char **args = argv + 2;
    if (!strcmp(mode, "clearenv")) clearenv();
    fflush(stdout);
    pid_t pid = fork();
    if (pid < 0) {
        perror("fork");
        return 2;
    }
    if (pid == 0) {
        char *empty[] = {NULL};
        if (!strcmp(mode, "clearenv")) execv(args[0], args);
        else if (!strcmp(mode, "emptyenv")) execve(args[0], args, empty);
        else if (!strcmp(mode, "nullenv")) execve(args[0], args, NULL);
        printf("%s = ERR %d\n", mode, errno);
        fflush(stdout);
        _exit(100);
    }
    int status;
    waitpid(pid, &status, 0);
    printf("%s exit=%d\n", mode, WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
    return 0;
}
