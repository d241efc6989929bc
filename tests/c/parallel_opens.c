// gcc: -pthread
/* parallel_opens: NTHREADS threads released at once, each opening PATH NOPENS times.
 *
 *   parallel_opens NTHREADS NOPENS PATH
 *
 * Prints "ok=N eperm=N other=N" over all threads.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define MAX_THREADS 64

static const char *path;
static int nopens;
static pthread_barrier_t start;

struct counts {
    int ok, eperm, other;
};

static void *worker(void *arg) {
    struct counts *c = arg;
    pthread_barrier_wait(&start);
    for (int i = 0; i < nopens; i++) {
        int fd = open(path, O_RDONLY);
        if (fd >= 0) {
            c->ok++;
            close(fd);
        } else if (errno == EPERM) {
            c->eperm++;
        } else {
            c->other++;
        }
    }
    return NULL;
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: parallel_opens NTHREADS NOPENS PATH\n");
        return 2;
    }
    int n = atoi(argv[1]);
    if (n < 1 || n > MAX_THREADS) return 2;
    nopens = atoi(argv[2]);
    path = argv[3];
    pthread_t tids[MAX_THREADS];
    struct counts counts[MAX_THREADS] = {{0, 0, 0}};
    pthread_barrier_init(&start, NULL, n);
    for (int i = 0; i < n; i++) pthread_create(&tids[i], NULL, worker, &counts[i]);
    struct counts total = {0, 0, 0};
    for (int i = 0; i < n; i++) {
        pthread_join(tids[i], NULL);
        total.ok += counts[i].ok;
        total.eperm += counts[i].eperm;
        total.other += counts[i].other;
    }
    printf("ok=%d eperm=%d other=%d\n", total.ok, total.eperm, total.other);
    return 0;
}
